"""Attribution of generations to sources: structural (``structural``: ablate each source's routing
slot), and the statistical baselines (captum TracInCP, D-TRAK via dattri), scored against ground truth
by retraining (leave-one-source-out, LDS)."""

from govlab.attribution.aggregate import per_source, ranking
from govlab.attribution.compare import CompareConfig, compare, summary_table
from govlab.attribution.dtrak import dtrak_scores
from govlab.attribution.lds import half_subsets, lds, lds_ci
from govlab.attribution.probe import Probe, make_probe, model_output, probe_loss, prompt_probe, train_probe
from govlab.attribution.retrain import retrain, retrain_all, retrain_dir
from govlab.attribution.structural import METHODS, attribute, slot_ablation_scores, slot_evidence_scores
from govlab.attribution.tracin import tracin_scores

__all__ = ["METHODS", "CompareConfig", "Probe", "attribute", "compare", "dtrak_scores", "half_subsets", "lds",
           "lds_ci", "make_probe", "model_output", "per_source", "probe_loss", "prompt_probe", "ranking", "retrain",
           "retrain_all", "retrain_dir", "slot_ablation_scores", "slot_evidence_scores", "summary_table",
           "tracin_scores", "train_probe"]
