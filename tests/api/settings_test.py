"""Tests for tfrobprune.api.settings: the API's settings become the RunConfig the matching CLI flags give."""

from absl.testing import absltest
from absl.testing import flagsaver
import numpy as np

from tfrobprune.api import settings
from tfrobprune import cli
from tfrobprune import config as config_lib
from tfrobprune.evaluate import evaluation

# The same run, as flags and as API settings (every value away from its default).
_FLAGS = dict(objective="trades", pretrain_objective="natural", eps=0.2, pgd_steps=3, pgd_step_size=0.05,
              trades_beta=4.0, eps_ramp_epochs=2.0, eps_warmup_epochs=0.5, eps_ramp_shape="smoothed",
              sparsity=["0.5", "0.8"], prune_schedule="constant", prune_scope="global", prune_frequency=10,
              prune_exclude=["logits"], prune_rounds=2, prune_end_fraction=0.4, pretrain_epochs=3, finetune_epochs=2,
              batch_size=64, learning_rate=0.01, finetune_learning_rate=0.002, lr_schedule="step",
              warmup_epochs=0.5, optimizer="sgd", weight_decay=1e-4, augment=True, validation_fraction=0.1,
              max_train_examples=500, eval_eps=0.25, eval_pgd_steps=7, eval_pgd_restarts=2, eval_examples=100,
              eval_batch_size=50, seed=3, prune_criterion="scores", score_epochs=3, score_learning_rate=0.05,
              score_budgets="magnitude", score_schedule="gradual", score_update_steps=20)
_OBJECTIVE = settings.Objective("trades", eps=0.2, pgd_steps=3, pgd_step_size=0.05, trades_beta=4.0,
                                eps_ramp_epochs=2.0, eps_warmup_epochs=0.5, eps_ramp_shape="smoothed")


def _api_config():
  return settings.run_config(
      "cnn_small", objective=_OBJECTIVE, pretrain_objective=settings.Objective("natural"),
      pruning=settings.Pruning(sparsity=(0.5, 0.8), schedule="constant", scope="global", frequency=10,
                               exclude_layers=["logits"], rounds=2, end_fraction=0.4, criterion="scores",
                               score_epochs=3, score_learning_rate=0.05, score_budgets="magnitude",
                               score_schedule="gradual", score_update_steps=20),
      training_settings=settings.Training(pretrain_epochs=3, finetune_epochs=2, batch_size=64, learning_rate=0.01,
                                          finetune_learning_rate=0.002, lr_schedule="step", warmup_epochs=0.5,
                                          optimizer="sgd", weight_decay=1e-4, augment=True, validation_fraction=0.1,
                                          max_train_examples=500),
      evaluation_settings=settings.Evaluation(eps=0.25, pgd_steps=7, pgd_restarts=2, examples=100, batch_size=50),
      seed=3)


def _comparable(config):
  """The config as a dict without what only one side sets: the data source and the schedule steps the pipeline
  fits to each phase."""
  record = config.to_dict()
  del record["data"]["dataset"], record["data"]["synthetic_examples"], record["data"]["synthetic_shape"]
  del record["pruning"]["begin_step"], record["pruning"]["end_step"]
  return record


class RunConfigTest(absltest.TestCase):

  @flagsaver.flagsaver(**_FLAGS)
  def testApiSettings_GiveTheCliFlagsRunConfig(self):
    self.assertEqual(_comparable(_api_config()), _comparable(cli.config_from_flags()))

  def testDataIsHandedOverAndRampsStayInEpochsForThePipeline(self):
    config = _api_config()
    self.assertEqual(config.data.dataset, config_lib.API_DATASET)
    self.assertEqual((config.pretrain_objective.name, config.finetune_objective.name), ("natural", "trades"))
    ramped = settings.run_config("cnn_small", objective=_OBJECTIVE, pruning=settings.Pruning(),
                                 training_settings=settings.Training(), evaluation_settings=settings.Evaluation())
    self.assertEqual(ramped.pretrain_objective.eps_ramp_epochs, 2.0)
    self.assertEqual(ramped.finetune_objective.eps_ramp_epochs, 0.0)  # fine-tuning starts at the full epsilon
    self.assertEqual(config_lib.with_epochs_in_steps(ramped, 1280).pretrain_objective.eps_ramp_steps, 20)

  def testDefaultsAreTheClis(self):
    config = settings.run_config("cnn_small", objective=settings.DEFAULT_OBJECTIVE, pruning=settings.Pruning(),
                                 training_settings=settings.Training(), evaluation_settings=settings.Evaluation())
    with flagsaver.flagsaver():
      self.assertEqual(_comparable(config), _comparable(cli.config_from_flags()))

  def testBoundObjectivesTurnOnVerifiedAccuracyAndAnEvalConfigIsUsedAsIs(self):
    ibp = settings.run_config("cnn_small", objective=settings.Objective("ibp", eps=0.1), pruning=settings.Pruning(),
                              training_settings=settings.Training(), evaluation_settings=settings.Evaluation())
    self.assertTrue(ibp.evaluation.verified)
    own = evaluation.EvalConfig(eps=0.3, fgsm=False)
    given = settings.run_config("cnn_small", objective=settings.DEFAULT_OBJECTIVE, pruning=settings.Pruning(),
                                training_settings=settings.Training(), evaluation_settings=own)
    self.assertIs(given.evaluation, own)


class SettingsValidationTest(absltest.TestCase):

  def testBadValues_AreNamedOnConstruction(self):
    cases = [
        (lambda: settings.Objective("pgd", eps=0.0), "needs eps > 0"),
        (lambda: settings.Objective("madry", eps=0.1), "objective must be one of"),
        (lambda: settings.Pruning(sparsity=1.2), "target_sparsity"),
        (lambda: settings.Pruning(sparsity=()), "at least one target sparsity"),
        (lambda: settings.Pruning(scope="net"), "scope"),
        (lambda: settings.Pruning(end_fraction=0), "end_fraction"),
        (lambda: settings.Pruning(criterion="random"), "criterion must be one of magnitude, scores"),
        (lambda: settings.Training(batch_size=0), "batch_size"),
        (lambda: settings.Training(finetune_epochs=0), "finetune_epochs"),
        (lambda: settings.Evaluation(pgd_restarts=0), "pgd_restarts"),
    ]
    for make, pattern in cases:
      with self.subTest(pattern=pattern):
        with self.assertRaisesRegex(ValueError, pattern):
          make()

  def testAnyPruningFrequencyIsAccepted(self):
    self.assertEqual(settings.Pruning(frequency=7).to_pruning_config().frequency, 7)

  def testOneStringIsAListOfNamesAsOnTheCommandLine_NotItsCharacters(self):
    self.assertEqual(settings.Pruning(exclude_layers="logits").exclude_layers, ("logits",))
    self.assertEqual(settings.Pruning(exclude_layers="conv1, logits").exclude_layers, ("conv1", "logits"))
    self.assertEqual(settings.Evaluation(attacks="autoattack").to_config(0.1, False).attacks, ("autoattack",))
    self.assertEqual(settings.Evaluation(attacks="pgd,autoattack").to_config(0.1, False).attacks,
                     ("pgd", "autoattack"))

  def testNumpySparsity_IsOneTarget(self):
    self.assertEqual(settings.Pruning(sparsity=np.float32(0.75)).sparsities, (0.75,))


if __name__ == "__main__":
  absltest.main()
