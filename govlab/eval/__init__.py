"""Evaluators trained on the world, and scores of a model against ground truth."""

from govlab.eval.classifiers import HEADS, Evaluator, load_evaluator
from govlab.eval.scores import eval_prompts, probe_prompts, score_images, score_model

__all__ = ["HEADS", "Evaluator", "eval_prompts", "load_evaluator", "probe_prompts", "score_images",
           "score_model"]
