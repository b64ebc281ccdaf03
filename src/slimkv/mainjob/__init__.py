"""The Quick-start job (`make run` / `slimkv main`): fetch the corpus, train the tiny Rodimus+ preset within a
wall-clock budget, evaluate it once on the whole held-out split, sample, and plot loss and inference memory.

    from slimkv.mainjob import run_main_job
    report = run_main_job("main", minutes=10)       # runs/main/{report.json, loss.png, memory.png, model/}
"""
from .job import run_main_job
from .planner import StepPlanner

__all__ = ["StepPlanner", "run_main_job"]
