"""A whole run on a streamed image folder, from flags: `--image_size` omitted, and `--eps_ramp_epochs=1` ramps over
exactly one epoch of the folder's real size (the CLI used to guess 1,024 examples before the data was loaded)."""

import os

from absl.testing import absltest
from absl.testing import flagsaver
import numpy as np
from PIL import Image

from tfrobprune import cli
from tfrobprune import pipeline


def _gray_folder(root, train_per_class, test_per_class, classes=3):
  """DIR/{train,test}/<class>/*.png, grey images whose brightness tells the class; the first training image is
  12x12 and every fourth is 16x16 (resized to the first one's size)."""
  rng = np.random.default_rng(0)
  for split, count in (("train", train_per_class), ("test", test_per_class)):
    for label in range(classes):
      os.makedirs(os.path.join(root, split, f"class{label}"))
      for index in range(count):
        size = 16 if index % 4 == 3 else 12
        pixels = np.clip(0.2 + 0.3 * label + rng.normal(0, 0.05, (size, size)), 0, 1)
        Image.fromarray((pixels * 255).astype(np.uint8), mode="L").save(
            os.path.join(root, split, f"class{label}", f"{index:02d}.png"))
  return root


class ImageFolderRunTest(absltest.TestCase):

  def testEpsilonRampsOverOneEpochOfTheFoldersRealSize(self):
    data_dir = _gray_folder(self.create_tempdir().full_path, train_per_class=25, test_per_class=4)
    flags = dict(dataset="image_folder", data_dir=data_dir, image_size=None, validation_fraction=0.2,
                 model="cnn_small", objective="pgd", eps=0.1, pgd_steps=1, eps_ramp_epochs=1.0, batch_size=16,
                 pretrain_epochs=2, finetune_epochs=1, sparsity=["0.5"], eval_pgd_steps=1, eval_pgd_restarts=1,
                 export=False, seed=0)
    with flagsaver.flagsaver(**flags):
      config = cli.config_from_flags()
    report = pipeline.run(config, self.create_tempdir().full_path,
                          pipeline.RunOptions(progress=None, log=lambda line: None))
    # 75 images, 15 held out: 60 // 16 = 3 steps an epoch (a guess of 1,024 examples would have made it 51).
    self.assertEqual((report["dataset"]["train"], report["dataset"]["input_shape"]), (60, [12, 12, 1]))
    pretrain = report["schedules"]["pretrain"]
    self.assertEqual((pretrain["steps_per_epoch"], pretrain["eps_ramp_steps"], pretrain["eps_warmup_steps"]),
                     (3, 3, 0))
    recorded = report["config"]["pretrain_objective"]
    self.assertEqual((recorded["eps_ramp_steps"], recorded["eps_ramp_epochs"]), (3, 0.0))
    # The ramp as it ran: epsilon 0, 1/3, 2/3 of 0.1 in the first epoch's steps, then 0.1 from the second epoch on.
    epochs = report["history"]["pretrain"]
    self.assertAlmostEqual(epochs[0]["eps"], 0.1 / 3, places=6)
    self.assertAlmostEqual(epochs[1]["eps"], 0.1, places=6)


if __name__ == "__main__":
  absltest.main()
