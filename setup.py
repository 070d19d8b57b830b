"""Packaging for tfrobprune: `pip install .`, or `pip install -e .` as bin/_bootstrap.sh does for the venv.

requirements.txt pins the exact versions the project venv is built and tested with. A library install should not
force those exact pins on its host environment, so each `name==X.Y.Z` pin becomes `name>=X.Y.Z,<X+1` here.
"""

import pathlib
import re

import setuptools

_HERE = pathlib.Path(__file__).resolve().parent
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\d+)\.([^\s#]+)$")
_EXTRA = re.compile(r"^#\s*extra:\s*(\w+)\s*$")


def _requirements(path):
  """Reads requirements.txt into (install_requires, extras_require) with relaxed version ranges.

  Args:
    path: the requirements file; `name==X.Y.Z` lines, comments, and `# extra: NAME` headers that send the lines
      below them to extras_require[NAME].

  Returns:
    (install_requires, extras_require).

  Raises:
    ValueError: for a line that is not an exact `name==version` pin.
  """
  install_requires, extras_require = [], {}
  target = install_requires
  for line_number, line in enumerate(path.read_text().splitlines(), start=1):
    line = line.strip()
    extra = _EXTRA.match(line)
    if extra:
      target = extras_require.setdefault(extra.group(1), [])
      continue
    if not line or line.startswith("#"):
      continue
    pin = _PIN.match(line)
    if not pin:
      raise ValueError(f"{path}:{line_number}: expected an exact pin `name==version`, got {line!r}")
    name, major, rest = pin.groups()
    target.append(f"{name}>={major}.{rest},<{int(major) + 1}")
  return install_requires, extras_require


_INSTALL_REQUIRES, _EXTRAS_REQUIRE = _requirements(_HERE / "requirements.txt")

setuptools.setup(
    name="tfrobprune",
    version=re.search(r'^__version__ = "([^"]+)"', (_HERE / "tfrobprune" / "__init__.py").read_text(),
                      re.MULTILINE).group(1),
    description="Compact and robust Keras models: adversarial pre-training, pruning and fine-tuning.",
    packages=setuptools.find_packages(include=["tfrobprune", "tfrobprune.*"]),
    python_requires=">=3.11",
    install_requires=_INSTALL_REQUIRES,
    extras_require=_EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["tfrobprune=tfrobprune.cli:run"]},
)
