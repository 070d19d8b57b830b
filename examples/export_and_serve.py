"""Serve the export of a finished run over TF Serving's REST API on loopback, and query it once.

    python examples/robust_prune_residual.py --output_dir=/tmp/residual
    python examples/export_and_serve.py --run_dir=/tmp/residual

The run's OUTPUT_DIR/export/saved_model holds <model name>/<version>/ in TF Serving's layout, so
`tensorflow_model_server --rest_api_port=8501 --model_base_path=.../saved_model/<model name>` serves it as well; here
tfrobprune's development server does (the CLI's `tfrobprune serve`). The answer is compared with the pruned Keras
model's own predictions.
"""

import json
import os
import urllib.request

from absl import app
from absl import flags
import numpy as np

import tfrobprune
from tfrobprune import config
from tfrobprune.data import datasets
from tfrobprune import pipeline
from tfrobprune.deploy.serving import server

def query_once(run_dir, images):
  """Starts a server on free loopback ports for the run's export, POSTs `images` to :predict once, stops it.

  Returns:
    The predicted classes.
  """
  with open(os.path.join(run_dir, "export", "manifest.json")) as handle:
    model_name = json.load(handle)["model_name"]
  with server.ModelServer(os.path.join(run_dir, "export", "saved_model"), model_name, host="127.0.0.1") as serving:
    request = urllib.request.Request(
        f"http://127.0.0.1:{serving.rest_port}/v1/models/{model_name}:predict",
        data=json.dumps({"instances": images.tolist()}).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
      predictions = json.loads(response.read())["predictions"]
  return np.array([prediction["classes"] for prediction in predictions])


def run(run_dir, examples=8):
  """Returns (the served model's classes, the pruned Keras model's classes) for the first test images."""
  with open(os.path.join(run_dir, "report.json")) as handle:
    report = json.load(handle)
  images = datasets.make_synthetic(report["dataset"]["train"], examples, report["dataset"]["input_shape"],
                                   report["dataset"]["num_classes"], seed=0).x_test  # your images here
  pruned = tfrobprune.load_model(pipeline.final_model_path(run_dir, config.RunConfig.from_dict(report["config"])))
  return query_once(run_dir, images), np.argmax(pruned.predict(images, verbose=0), axis=1)


def main(argv):
  del argv
  served, local = run(flags.FLAGS.run_dir)
  print(f"served classes: {served.tolist()}")
  print(f"Keras classes:  {local.tolist()}  (agreement {np.mean(served == local):.0%})")


if __name__ == "__main__":
  flags.DEFINE_string("run_dir", None, "A finished run with exports (robust_prune_residual.py's output_dir).",
                      required=True)
  app.run(main)
