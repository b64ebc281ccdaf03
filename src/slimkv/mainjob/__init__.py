"""The quick starts: `slimkv main` (`make run`: fetch the corpus, train the tiny Rodimus+ preset within a wall-clock
budget, evaluate it, sample, plot loss and inference memory) and `slimkv demo` (`make demo`: a random model's
constant-size cache in seconds).

    from slimkv.mainjob import MainJobConfig, run_main_job
    report = run_main_job(MainJobConfig(name="main", minutes=10))   # runs/main/{report.json, loss.png, memory.png}
"""
from .job import MainJobConfig, run_main_job
from .planner import StepPlanner

__all__ = ["MainJobConfig", "StepPlanner", "run_main_job"]
