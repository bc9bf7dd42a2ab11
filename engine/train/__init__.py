"""The model and train stages: build (or restore) the Transformer, then train it.

Rooms, each found by its name:

    state.py        noam_lr and NoamSchedule, TrainingState (what a checkpoint holds), the
                    pause-excluding clock, the epoch's loss sums
    model_stage.py  the model stage: the Transformer, optimizer, schedule, scaler; resume
    step.py         UpdateStep: forward/backward/accumulate, OOM agreement, clipping, Adam
                    (the run's loop, benchmarks/gpu_check.py and bench_train.py drive it)
    compiling.py    training.compile: the training forward through torch.compile, timed
    checkpoints.py  checkpoint_last.pt timing and writing, best/epoch/update checkpoints,
                    averaged.pt
    validation.py   validation loss, BLEU, sample translations, test BLEU
    memory_watch.py MemorySample, per-batch peaks, the worst-case and beam-search preflight
    guard.py        the divergence guard: bad batches (NaN ones over a window), a diverged
                    validation or update, measured against the run's history across resumes
    loop.py         TrainLoop and the train stage: epochs of updates, as the paper trains
"""

from engine.train.loop import TrainLoop, run_train_stage
from engine.train.model_stage import run_model_stage
from engine.train.state import NoamSchedule, TrainingState, noam_lr
from engine.train.step import UpdateGroup, UpdateStep

# (the loop's PROGRESS_SECONDS is engine.train.loop's: patch it there, a copy here would not act)
__all__ = ["NoamSchedule", "TrainLoop", "TrainingState", "UpdateGroup", "UpdateStep", "noam_lr",
           "run_model_stage", "run_train_stage"]
