"""Evaluation: steered generation with seven methods, metrics, judges, results and reports.

    from l2s_data.evaluate import Evaluation, write_report
    report = Evaluation.from_file("l2s_data/evaluate/configs/tiny-llava.toml").run()
    write_report(store, report.run_id, "reports/eval")
"""

from l2s_data.evaluate.config import EvalConfig, load_config, parse_config
from l2s_data.evaluate.generation import EvalItem, SteeredGenerator
from l2s_data.evaluate.methods import METHOD_NAMES, METHODS, Method, get_method, parse_alphas
from l2s_data.evaluate.report import write_report
from l2s_data.evaluate.results import load_results
from l2s_data.evaluate.run import Evaluation, EvalPlan, EvalReport
from l2s_data.evaluate.sources import ActivationCache, VectorPredictor, VectorSources

__all__ = [
    "ActivationCache",
    "EvalConfig",
    "EvalItem",
    "EvalPlan",
    "EvalReport",
    "Evaluation",
    "METHODS",
    "METHOD_NAMES",
    "Method",
    "SteeredGenerator",
    "VectorPredictor",
    "VectorSources",
    "get_method",
    "load_config",
    "load_results",
    "parse_alphas",
    "parse_config",
    "write_report",
]
