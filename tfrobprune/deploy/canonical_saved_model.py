"""Byte-reproducible SavedModels: the parts of `tf.saved_model.save`'s output that vary between processes, fixed.

Saving the same weights and signature twice writes the same checkpoint (variables/), but not the same
saved_model.pb and fingerprint.pb:
- traced functions are named after TensorFlow's process-wide counter (`__inference_serve_8044`,
  `assert_less_equal_Assert_AssertGuard_true_7984`), and so are the captured inputs of the signature wrapper
  (`_user_specified_name: "8052"`). The counter's value depends on everything the process traced before, so a
  resumed run, which traces less than an uninterrupted one, names the same functions differently;
- fingerprint.pb holds a checksum of saved_model.pb and a random uuid.

`canonicalize(export_dir)` replaces each such counter value by its rank among those in the file
(`__inference_serve_4`), orders the function library by name, and rewrites fingerprint.pb with its checksum
recomputed by TensorFlow and a uuid derived from the SavedModel's content. The program is unchanged: the same
functions, ops and signature under other names (`tf.saved_model.load` renames functions as it loads them anyway).
"""

import hashlib
import os
import re

from absl import logging

from tfrobprune.deploy import artifact_files
from tfrobprune.keras_compat import tf  # noqa: F401  (sets up TensorFlow before the imports below)

from tensorflow.core.protobuf import fingerprint_pb2  # noqa: E402,I100
from tensorflow.core.protobuf import saved_model_pb2  # noqa: E402
from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting  # noqa: E402

SAVED_MODEL_PB = "saved_model.pb"
FINGERPRINT_PB = "fingerprint.pb"
_COUNTER_SUFFIX = re.compile(r"(.*)_(\d+)")
_USER_SPECIFIED_NAME = "_user_specified_name"


def canonicalize(export_dir):
  """Rewrites export_dir/saved_model.pb and fingerprint.pb so that they depend only on the model and signature.

  Args:
    export_dir: a directory just written by `tf.saved_model.save` (binary saved_model.pb).

  Returns:
    True if the files were rewritten; False (with a warning, the files left as TensorFlow wrote them) if a
    function name also occurs where it cannot be renamed (inside a bytes field).
  """
  path = os.path.join(export_dir, SAVED_MODEL_PB)
  with open(path, "rb") as handle:
    proto = saved_model_pb2.SavedModel.FromString(handle.read())
  renames, counters = _renames(proto)
  unrenamable = _unrenamable(proto, renames)
  if unrenamable:
    logging.warning("SavedModel %s: function names %s also occur inside other strings or bytes; left as "
                    "TensorFlow wrote it (its bytes are not reproducible).", export_dir, unrenamable)
    return False
  _rename_strings(proto, renames)
  _rename_user_specified_names(proto, counters)
  _sort_libraries(proto)
  artifact_files.write_artifact(path, proto.SerializeToString(deterministic=True))
  if os.path.exists(os.path.join(export_dir, FINGERPRINT_PB)):  # TensorFlow writes none if fingerprinting is off
    _write_fingerprint(export_dir)
  return True


def _function_names(proto):
  return {function.signature.name for meta_graph in proto.meta_graphs
          for function in meta_graph.graph_def.library.function}


def _attr_maps(proto):
  """Every NodeDef attr map and function argument attr map of the SavedModel's graphs."""
  for meta_graph in proto.meta_graphs:
    yield from (node.attr for node in meta_graph.graph_def.node)
    for function in meta_graph.graph_def.library.function:
      yield from (node.attr for node in function.node_def)
      yield from (arg.attr for arg in function.arg_attr.values())


def _numeric_user_specified_names(proto):
  return [attrs[_USER_SPECIFIED_NAME] for attrs in _attr_maps(proto)
          if _USER_SPECIFIED_NAME in attrs and attrs[_USER_SPECIFIED_NAME].s.isdigit()]


def _renames(proto):
  """({old function name: canonical name}, {counter value: rank}) over every counter value in the SavedModel.

  Renamed names are distinct: distinct (base, counter) pairs keep distinct (base, rank) pairs, and a name without a
  counter suffix, which is kept, cannot equal one with.
  """
  suffixed = {name: _COUNTER_SUFFIX.fullmatch(name) for name in _function_names(proto)}
  suffixed = {name: match for name, match in suffixed.items() if match}
  values = {int(match.group(2)) for match in suffixed.values()}
  values |= {int(attr.s) for attr in _numeric_user_specified_names(proto)}
  counters = {value: rank for rank, value in enumerate(sorted(values))}
  return {name: f"{match.group(1)}_{counters[int(match.group(2))]}" for name, match in suffixed.items()}, counters


def _strings(message):
  """(value, is_string_field) for every string and bytes field, repeated entry, map key and map value in `message`."""
  for field, value in message.ListFields():
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
      yield from _map_strings(field, value)
    elif field.type == field.TYPE_MESSAGE:
      for item in (value if field.is_repeated else [value]):
        yield from _strings(item)
    elif field.type in (field.TYPE_STRING, field.TYPE_BYTES):
      yield from ((item, field.type == field.TYPE_STRING) for item in (value if field.is_repeated else [value]))


def _map_strings(field, mapping):
  key_field, value_field = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
  for key, value in mapping.items():
    if key_field.type == key_field.TYPE_STRING:
      yield key, True
    if value_field.type == value_field.TYPE_MESSAGE:
      yield from _strings(value)
    elif value_field.type in (value_field.TYPE_STRING, value_field.TYPE_BYTES):
      yield value, value_field.type == value_field.TYPE_STRING


def _unrenamable(proto, renames):
  """Old names that occur other than as a whole string (which `_rename_strings` renames), sorted."""
  found = set()
  for value, is_string in _strings(proto):
    text = value if is_string else value.decode("latin-1")
    if not (is_string and text in renames):  # a whole old name is renamed, even if another old name is inside it
      found.update(name for name in renames if name in text)
  return sorted(found)


def _rename_strings(message, renames):
  """Replaces, anywhere in `message`, every string field, repeated entry, map key or map value equal to an old name."""
  for field, value in message.ListFields():
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
      _rename_map(field, value, renames)
    elif field.type == field.TYPE_MESSAGE:
      for item in (value if field.is_repeated else [value]):
        _rename_strings(item, renames)
    elif field.type == field.TYPE_STRING and field.is_repeated:
      value[:] = [renames.get(item, item) for item in value]
    elif field.type == field.TYPE_STRING and value in renames:
      setattr(message, field.name, renames[value])


def _rename_map(field, mapping, renames):
  key_field, value_field = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
  if value_field.type == value_field.TYPE_MESSAGE:
    for key in mapping:
      _rename_strings(mapping[key], renames)
  elif value_field.type == value_field.TYPE_STRING:
    for key in [key for key in mapping if mapping[key] in renames]:
      mapping[key] = renames[mapping[key]]
  if key_field.type == key_field.TYPE_STRING:
    moved = {renames[key]: _detached(mapping[key]) for key in mapping if key in renames}
    for key in [key for key in mapping if key in renames]:  # all removed first: a new key may be another's old one
      del mapping[key]
    for key, value in moved.items():
      if value_field.type == value_field.TYPE_MESSAGE:
        mapping[key].CopyFrom(value)
      else:
        mapping[key] = value


def _detached(value):
  """A copy of a map or list entry that outlives the entry's deletion (messages are references into their parent)."""
  if not hasattr(value, "CopyFrom"):
    return value
  copy = type(value)()
  copy.CopyFrom(value)
  return copy


def _rename_user_specified_names(proto, counters):
  for attr in _numeric_user_specified_names(proto):
    attr.s = str(counters[int(attr.s)]).encode()


def _sort_libraries(proto):
  """Orders each function library by name (TensorFlow orders it by the old, counter-dependent names)."""
  for meta_graph in proto.meta_graphs:
    library = meta_graph.graph_def.library
    functions = [_detached(function) for function in sorted(library.function, key=lambda f: f.signature.name)]
    gradients = [_detached(gradient) for gradient in sorted(library.gradient, key=lambda g: (g.function_name,
                                                                                            g.gradient_func))]
    del library.function[:], library.gradient[:]
    library.function.extend(functions)
    library.gradient.extend(gradients)


def content_uuid(export_dir):
  """A 128-bit decimal id (TensorFlow's uuid format) from the sha256 of every file but fingerprint.pb."""
  digest = hashlib.sha256()
  for name in artifact_files.relative_files(export_dir):
    if name != FINGERPRINT_PB:
      digest.update(f"{name}\0{artifact_files.sha256(os.path.join(export_dir, name))}\0".encode())
  return str(int.from_bytes(digest.digest()[:16], "big"))


def _write_fingerprint(export_dir):
  """fingerprint.pb as TensorFlow computes it for the rewritten saved_model.pb, with a content-derived uuid."""
  fingerprint = fingerprint_pb2.FingerprintDef.FromString(fingerprinting.CreateFingerprintDef(export_dir))
  fingerprint.uuid = content_uuid(export_dir)
  artifact_files.write_artifact(os.path.join(export_dir, FINGERPRINT_PB), fingerprint.SerializeToString(
      deterministic=True))
