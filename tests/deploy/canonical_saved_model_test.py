"""Tests for tfrobprune.deploy.canonical_saved_model: counter-named functions renamed by rank, fingerprint rewritten."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import deploy_test_utils  # noqa: E402
from tfrobprune.deploy import canonical_saved_model  # noqa: E402
from tfrobprune.deploy import saved_model  # noqa: E402
from tfrobprune.keras_compat import tf  # noqa: E402
from tfrobprune import models  # noqa: E402

from tensorflow.core.protobuf import fingerprint_pb2  # noqa: E402,I100
from tensorflow.core.protobuf import saved_model_pb2  # noqa: E402
from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting  # noqa: E402


def _hand_built_proto():
  """Functions f_5 (calls cond_true_9), cond_true_9, f_1 and plain; counters 1, 5, 9 and a captured input "7"."""
  proto = saved_model_pb2.SavedModel()
  meta_graph = proto.meta_graphs.add()
  library = meta_graph.graph_def.library
  for name in ("f_5", "cond_true_9", "f_1", "plain"):
    library.function.add().signature.name = name
  branch = library.function[0].node_def.add(name="cond", op="If")
  branch.attr["then_branch"].func.name = "cond_true_9"
  library.function[0].arg_attr[0].attr["_user_specified_name"].s = b"7"
  library.function[0].arg_attr[1].attr["_user_specified_name"].s = b"images"
  meta_graph.graph_def.node.add(name="call", op="StatefulPartitionedCall").attr["f"].func.name = "f_5"
  meta_graph.object_graph_def.concrete_functions["f_5"].bound_inputs.append(5)
  meta_graph.object_graph_def.concrete_functions["f_1"].bound_inputs.append(1)
  meta_graph.object_graph_def.nodes.add().function.concrete_functions.extend(["f_5", "f_1"])
  return proto


class CanonicalizeHandBuiltTest(tf.test.TestCase):

  def _write(self, proto):
    directory = self.create_tempdir().full_path
    with open(os.path.join(directory, "saved_model.pb"), "wb") as handle:
      handle.write(proto.SerializeToString())
    return directory

  def _read(self, directory):
    with open(os.path.join(directory, "saved_model.pb"), "rb") as handle:
      return saved_model_pb2.SavedModel.FromString(handle.read())

  def testCounters_BecomeTheirRanks_EverywhereTheNamesAreUsed(self):
    directory = self._write(_hand_built_proto())
    self.assertTrue(canonical_saved_model.canonicalize(directory))
    meta_graph = self._read(directory).meta_graphs[0]
    library = meta_graph.graph_def.library
    # counters 1, 5, 7, 9 have ranks 0, 1, 2, 3; the library is ordered by the new names
    self.assertEqual([f.signature.name for f in library.function], ["cond_true_3", "f_0", "f_1", "plain"])
    caller = library.function[2]  # the old f_5
    self.assertEqual(caller.node_def[0].attr["then_branch"].func.name, "cond_true_3")
    self.assertEqual(caller.arg_attr[0].attr["_user_specified_name"].s, b"2")
    self.assertEqual(caller.arg_attr[1].attr["_user_specified_name"].s, b"images")
    self.assertEqual(meta_graph.graph_def.node[0].attr["f"].func.name, "f_1")
    self.assertEqual({name: list(f.bound_inputs) for name, f in meta_graph.object_graph_def.concrete_functions.items()},
                     {"f_0": [1], "f_1": [5]})
    self.assertEqual(list(meta_graph.object_graph_def.nodes[0].function.concrete_functions), ["f_1", "f_0"])

  def testMapKeys_WhoseNewNameIsAnotherOldName_MoveWithoutOverwritingIt(self):
    proto = saved_model_pb2.SavedModel()
    meta_graph = proto.meta_graphs.add()
    families = "abcdefgh"  # x_2 becomes x_1 while the old x_1 becomes x_0; maps iterate in a per-process order
    for family in families:
      for counter in (1, 2):
        meta_graph.graph_def.library.function.add().signature.name = f"{family}_{counter}"
        meta_graph.object_graph_def.concrete_functions[f"{family}_{counter}"].bound_inputs.append(counter)
    directory = self._write(proto)
    self.assertTrue(canonical_saved_model.canonicalize(directory))
    moved = self._read(directory).meta_graphs[0].object_graph_def.concrete_functions
    self.assertEqual({name: list(f.bound_inputs) for name, f in moved.items()},
                     {f"{family}_{rank}": [rank + 1] for family in families for rank in (0, 1)})

  def testNameInsideBytesOrAnotherString_LeavesTheFileAsWritten_AndWarns(self):
    for where in ("bytes", "string"):
      proto = _hand_built_proto()
      node = proto.meta_graphs[0].graph_def.node[0]
      if where == "bytes":
        node.attr["note"].s = b"calls f_5"
      else:
        node.name = "f_5/call"
      directory = self._write(proto)
      with self.assertLogs("absl", "WARNING") as logs:
        self.assertFalse(canonical_saved_model.canonicalize(directory))
      self.assertIn("['f_5']", logs.output[0])
      self.assertEqual(self._read(directory), proto, where)


class CanonicalizeExportTest(tf.test.TestCase):

  def testFingerprint_IsTensorFlowsForTheRewrittenFile_WithAContentUuid(self):
    model = models.build_model(deploy_test_utils.MODEL_NAME, deploy_test_utils.SHAPE, deploy_test_utils.CLASSES,
                               seed=0)
    path = saved_model.export_saved_model(model, self.create_tempdir().full_path, "m")
    with open(os.path.join(path, "fingerprint.pb"), "rb") as handle:
      written = fingerprint_pb2.FingerprintDef.FromString(handle.read())
    computed = fingerprint_pb2.FingerprintDef.FromString(fingerprinting.CreateFingerprintDef(path))
    self.assertEqual(written.uuid, canonical_saved_model.content_uuid(path))
    written.ClearField("uuid")
    computed.ClearField("uuid")
    self.assertEqual(written, computed)  # the checksum is that of the rewritten saved_model.pb
    self.assertEqual(tf.saved_model.experimental.read_fingerprint(path).saved_model_checksum,
                     computed.saved_model_checksum)


if __name__ == "__main__":
  tf.test.main()
