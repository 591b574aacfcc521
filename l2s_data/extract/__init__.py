"""Extraction: recipes, plan, worker. A config names the model, data, behavior and recipe; a run
computes the input / pos / neg / p2s views of every selected sample that the store lacks.

See ``README.md`` beside this file for the config reference, the CLI and the benchmark.
"""

from l2s_data.extract.config import ExtractConfig, load_config, parse_config, parse_layers
from l2s_data.extract.plan import Plan, SampleItem, Shard, ShardPart, make_plan, part_id
from l2s_data.extract.recipe import ModelIdentity, Recipe, RecipeRef, make_recipes
from l2s_data.extract.run import DryRun, Extraction, RunReport
from l2s_data.extract.shard import ExtractJob, ShardOutcome, ShardResult
from l2s_data.extract.worker import ExtractionWorker

__all__ = [
    "ExtractConfig", "load_config", "parse_config", "parse_layers",
    "Plan", "SampleItem", "Shard", "ShardPart", "make_plan", "part_id",
    "ModelIdentity", "Recipe", "RecipeRef", "make_recipes",
    "DryRun", "Extraction", "RunReport",
    "ExtractionWorker", "ExtractJob", "ShardOutcome", "ShardResult",
]
