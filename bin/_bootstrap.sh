# shellcheck shell=bash
# Sourced by bin/test, bin/demo and bin/tfrobprune: makes this machine able to build, test and run tfrobprune.
#
#   1. Debian packages: Bazel 4 (bazel-bootstrap) and its Java rules, the Fashion-MNIST files (and python3-venv
#      when the base Python cannot make venvs). apt runs only when one is missing.
#   2. A venv at $TFROBPRUNE_VENV (default ~/.cache/tfrobprune/venv) on Python >= 3.11 holding requirements.txt.
#      The requirements are reinstalled only when requirements.txt's sha256 differs from the stamp in the venv.
#   3. tfrobprune installed editable into that venv, redone only when setup.py, requirements.txt or the checkout's
#      path change.
#
# Afterwards TFROBPRUNE_ROOT (this checkout), TFROBPRUNE_VENV and TFROBPRUNE_PYTHON (the venv's interpreter) are
# exported. Progress goes to stderr; when everything is in place nothing is printed and it takes a fraction of a
# second. Concurrent bootstraps of one venv wait for each other (flock).
#
# Environment: TFROBPRUNE_VENV (venv path), TFROBPRUNE_BASE_PYTHON (interpreter to create the venv with; default
# pyenv's python3 if present, else python3 on PATH).

TFROBPRUNE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TFROBPRUNE_VENV="${TFROBPRUNE_VENV:-$HOME/.cache/tfrobprune/venv}"
TFROBPRUNE_PYTHON="$TFROBPRUNE_VENV/bin/python"
export TFROBPRUNE_ROOT TFROBPRUNE_VENV TFROBPRUNE_PYTHON

_tfrp_log() {
  echo "bootstrap: $*" >&2
}

_tfrp_sha256() {
  sha256sum "$1" | cut -d' ' -f1
}

# Prints the first Python >= 3.11 among the candidates.
_tfrp_base_python() {
  local candidate
  for candidate in "${TFROBPRUNE_BASE_PYTHON:-}" "${PYENV_ROOT:-$HOME/.pyenv}/shims/python3" python3; do
    [[ -n "$candidate" ]] && command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  _tfrp_log "no Python >= 3.11 found (tried \$TFROBPRUNE_BASE_PYTHON, pyenv's python3, python3 on PATH)"
  return 1
}

_tfrp_venv_ok() {
  [[ -x "$TFROBPRUNE_PYTHON" ]] \
    && "$TFROBPRUNE_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

_tfrp_ensure_apt() {
  local packages=(bazel-bootstrap bazel-rules-java dataset-fashion-mnist) missing=() pkg
  if ! _tfrp_venv_ok && ! "$(_tfrp_base_python)" -c 'import ensurepip' 2>/dev/null; then
    packages+=(python3-venv)  # Debian splits ensurepip out of python3.
  fi
  for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  (( ${#missing[@]} )) || return 0

  local sudo=()
  if (( EUID != 0 )); then
    command -v sudo >/dev/null || { _tfrp_log "need root (or sudo) to apt-get install ${missing[*]}"; return 1; }
    sudo=(sudo)
  fi
  _tfrp_log "installing Debian packages: ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
}

_tfrp_ensure_venv() {
  _tfrp_venv_ok && return 0
  if [[ -e "$TFROBPRUNE_VENV" ]]; then
    # Only ever delete a directory that is a (broken) venv.
    [[ -f "$TFROBPRUNE_VENV/pyvenv.cfg" ]] \
      || { _tfrp_log "$TFROBPRUNE_VENV exists but is not a venv; move it or set TFROBPRUNE_VENV"; return 1; }
    _tfrp_log "removing broken venv $TFROBPRUNE_VENV"
    rm -rf "$TFROBPRUNE_VENV"
  fi
  local base
  base="$(_tfrp_base_python)" || return 1
  _tfrp_log "creating venv $TFROBPRUNE_VENV with $base ($("$base" --version 2>&1))"
  "$base" -m venv "$TFROBPRUNE_VENV"
}

_tfrp_ensure_requirements() {
  local stamp="$TFROBPRUNE_VENV/.tfrobprune-requirements.sha256" want
  want="$(_tfrp_sha256 "$TFROBPRUNE_ROOT/requirements.txt")"
  [[ -f "$stamp" && "$(<"$stamp")" == "$want" ]] && return 0
  _tfrp_log "installing requirements.txt into $TFROBPRUNE_VENV (a few minutes the first time)"
  "$TFROBPRUNE_PYTHON" -m pip install --progress-bar off -r "$TFROBPRUNE_ROOT/requirements.txt" >&2
  echo "$want" >"$stamp"
}

_tfrp_ensure_package() {
  local stamp="$TFROBPRUNE_VENV/.tfrobprune-editable" want
  want="$(_tfrp_sha256 "$TFROBPRUNE_ROOT/setup.py") $(_tfrp_sha256 "$TFROBPRUNE_ROOT/requirements.txt")"
  want+=" $TFROBPRUNE_ROOT"
  [[ -f "$stamp" && "$(<"$stamp")" == "$want" ]] && return 0
  _tfrp_log "installing tfrobprune from $TFROBPRUNE_ROOT (editable) into $TFROBPRUNE_VENV"
  local isolation=()
  # The venv's own setuptools builds the editable install offline; without one, pip fetches it.
  "$TFROBPRUNE_PYTHON" -c 'import setuptools, wheel' 2>/dev/null && isolation=(--no-build-isolation)
  "$TFROBPRUNE_PYTHON" -m pip install --progress-bar off --no-deps "${isolation[@]}" -e "$TFROBPRUNE_ROOT" >&2
  echo "$want" >"$stamp"
}

_tfrp_bootstrap() {
  mkdir -p "$(dirname "$TFROBPRUNE_VENV")"
  local lock status errexit=0
  lock="$(dirname "$TFROBPRUNE_VENV")/.$(basename "$TFROBPRUNE_VENV").lock"
  [[ $- == *e* ]] && errexit=1
  # The work runs in a subshell (which holds the lock) with its own `set -e`; that only takes effect if the
  # subshell is a plain statement, not part of an `||` or `if`, hence the status juggling.
  set +e
  (
    set -euo pipefail
    exec 9>"$lock"
    if ! flock -n 9; then
      _tfrp_log "waiting for another bootstrap of $TFROBPRUNE_VENV to finish"
      flock 9
    fi
    _tfrp_ensure_apt
    _tfrp_ensure_venv
    _tfrp_ensure_requirements
    _tfrp_ensure_package
  )
  status=$?
  (( errexit )) && set -e
  (( status == 0 )) || _tfrp_log "failed (exit status $status); see the messages above"
  return "$status"
}

# Callers run with `set -e`, so a failed bootstrap ends them here.
_tfrp_bootstrap
