"""The headless printer writes the seed's progress lines from events."""

import io

from engine import events as ev
from engine.printer import HeadlessPrinter


def printed(events, log_interval=0.0) -> str:
    stream = io.StringIO()
    printer = HeadlessPrinter(stream, log_interval=log_interval)
    for event in events:
        printer(event)
    return stream.getvalue()


def test_tokenizer_lines():
    text = printed([
        ev.StageStarted(stage="tokenizer", index=2, total=6),
        ev.WordCountProgress(done=4_508_785, total=4_508_785, per_second=36_000.0, elapsed=123.5),
        ev.MergeProgress(merges=15_234, target_merges=36_687, vocab_size=15_547, target_vocab=37_000,
                         per_second=45.0, eta=476.3, elapsed=300.0),
        ev.StageFinished(stage="tokenizer", seconds=800.0,
                         info={"vocab_size": 37000, "merges": 36687, "alphabet": 309}),
    ])
    # two phases, unnumbered: the trainer's middle steps (tokenize words, count pairs) have no
    # progress of their own, and "[Step 1/4]" then "[Step 4/4]" read as two steps lost
    assert "\nComputing word frequencies...\n" in "\n" + text
    assert "Progress: 4,508,785/4,508,785 (100.0%) | Elapsed: 123.5s | Done!" in text
    assert "\nPerforming BPE merges...\n" in text
    assert "[Step" not in text and "/4]" not in text
    assert ("Merges: 15,234/36,687 (41.5%) | Vocab: 15,547/37,000 | Speed: 45 merges/s | "
            "ETA: 476.3s") in text
    assert "Training Complete!" in text and "Final vocab size: 37,000" in text


def test_the_start_line_says_what_runs_in_one_line():
    versions = {"torch": "2.13.0", "cuda": "12.8", "cudnn": "9.10.2", "nccl": "2.27.3",
                "driver": "570.86", "device": "NVIDIA H100 80GB HBM3"}
    text = printed([ev.RunStarted(run_dir="saved/x", preset="small", stages=["data", "train"],
                                  versions=versions)])
    assert text == ("Run 'small' in saved/x | stages: data, train | torch 2.13.0, CUDA 12.8, "
                    "cuDNN 9.10.2, NCCL 2.27.3, driver 570.86, NVIDIA H100 80GB HBM3\n")
    # a run from before versions were recorded: the line as it was
    old = ev.from_json('{"event":"RunStarted","run_dir":"saved/x","preset":"small",'
                       '"stages":["data"],"processes":1,"time":1.0}')
    assert old.versions == {}
    assert printed([old]) == "Run 'small' in saved/x | stages: data\n"


def test_training_lines():
    text = printed([
        ev.BatchProgress(epoch=1, epochs=100, batch=5400, batches=5412, step=5400, loss=3.2145,
                         avg_loss=4.5231, lr=0.000234, batches_per_second=2.1,
                         tokens_per_second=52_000.0, eta=6.0, elapsed=2570.0),
        ev.EpochSummary(epoch=1, epochs=100, step=5412, train_loss=4.5231, train_ppl=92.15,
                        val_loss=4.2341, val_ppl=68.92, bleu=None, epoch_seconds=2576.0,
                        total_seconds=2576.0),
        ev.CheckpointSaved(path="saved/run/model_epoch_10.pt", name="model_epoch_10.pt", epoch=10,
                           step=54120, val_loss=4.2, bleu=None, size_bytes=700 * 2**20,
                           saved_at=0.0),
    ])
    assert ("Batch 5,400/5,412 (99.8%) | Loss: 3.2145 (avg: 4.5231) | LR: 0.000234 | "
            "Speed: 2.1 batch/s") in text
    assert "Epoch 1/100 Summary:" in text
    assert "Train Loss: 4.5231 | Train PPL: 92.15" in text
    assert "Val Loss:   4.2341 | Val PPL:   68.92" in text
    assert "Checkpoint saved: saved/run/model_epoch_10.pt" in text


def test_progress_is_throttled_off_a_terminal_but_the_final_state_always_prints():
    events = [ev.MergeProgress(merges=i, target_merges=100, vocab_size=10 + i, target_vocab=110,
                               per_second=1.0, eta=1.0, elapsed=1.0) for i in range(1, 101)]
    text = printed(events, log_interval=3600)
    lines = [line for line in text.splitlines() if "Merges:" in line]
    assert len(lines) == 2  # the first, then nothing until the final 100/100
    assert "100/100 (100.0%)" in lines[-1]


def test_failure_names_the_stage_and_the_reason():
    text = printed([ev.RunFailed(stage="data", message="train.en: 3 lines, train.de: 4 lines")])
    assert "FAILED in stage data: train.en: 3 lines, train.de: 4 lines" in text


class Terminal(io.StringIO):
    """What the printer writes to a terminal: isatty() is True."""

    def isatty(self) -> bool:
        return True


def batches(n: int) -> list[ev.BatchProgress]:
    return [ev.BatchProgress(epoch=3, epochs=100, batch=i, batches=n, step=10_000 + i,
                             loss=3.2145, avg_loss=4.5231, lr=0.000234, batches_per_second=2.1,
                             tokens_per_second=52_000.0, eta=600.0, elapsed=2570.0, gnorm=1.234)
            for i in range(1, n + 1)]


def test_on_an_80_column_terminal_one_line_is_updated_in_place_and_never_wraps():
    stream = Terminal()
    printer = HeadlessPrinter(stream, width=80)
    for event in batches(50):
        printer(event)
    updates = stream.getvalue().split("\r\x1b[2K")[1:]
    assert len(updates) == 50
    assert all(len(update.rstrip("\n")) < 80 for update in updates)
    assert all("\n" not in update for update in updates[:-1])  # in place until the epoch's end
    assert updates[0].startswith("  Epoch 3/100 | Batch 1/50 (2.0%) | Loss: 3.2145")
    assert "ETA: 10m00s" in updates[0]  # what is left out is what matters least (LR, speed)
    wide = Terminal()
    HeadlessPrinter(wide, width=200)(batches(1)[0])
    assert "LR: 0.000234" in wide.getvalue() and "gnorm: 1.23" in wide.getvalue()


def test_into_a_log_file_whole_lines_every_few_seconds_and_no_carriage_return():
    stream = io.StringIO()  # not a terminal: nohup, a log file
    printer = HeadlessPrinter(stream, log_interval=3600)
    for event in batches(50):
        printer(event)
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 2  # the first, then nothing until the epoch's last batch
    assert "Batch 50/50 (100.0%)" in lines[-1] and "LR: 0.000234" in lines[-1]


def test_merges_per_second_of_a_phase_that_ended_between_two_reports_is_its_average():
    text = printed([ev.MergeProgress(merges=900, target_merges=900, vocab_size=1000,
                                     target_vocab=1000, per_second=0.0, eta=0.0, elapsed=2.0)])
    assert "Speed: 450 merges/s" in text

def test_prep_progress_lines_for_reading_downloading_and_encoding():
    text = printed([
        ev.DownloadProgress(what="Downloading data", done=512 * 2**20, total=1.5 * 2**30,
                            unit="B", per_second=20 * 2**20, eta=52.8, elapsed=25.6),
        ev.DownloadProgress(what="Generating train split", done=4_508_785, total=4_508_785,
                            unit="examples", per_second=90_000.0, elapsed=50.1, final=True),
        ev.DataProgress(split="train", pairs=1_200_000, per_second=400_000.0, elapsed=3.0),
        ev.EncodeProgress(split="train", done=2_000_000, total=4_500_000, per_second=40_000.0,
                          eta=62.5, elapsed=50.0),
    ])
    assert "Downloading data: 512.0 MB/1.50 GB | 20.0 MB/s | ETA: 52.8s" in text
    assert "Generating train split: 4,508,785/4,508,785 | 90,000 examples/s" in text
    assert "Reading train: 1,200,000 pairs | 400,000 pairs/s" in text
    assert "Encoding train: 2,000,000/4,500,000 pairs (44.4%) | 40,000 pairs/s | ETA: 1m02s" in text


def test_a_run_measured_in_updates_shows_the_time_left_to_its_end_beside_the_epochs():
    text = printed([ev.BatchProgress(
        epoch=2, epochs=18, batch=100, batches=5705, step=5805, loss=3.2, avg_loss=3.5,
        lr=0.0007, batches_per_second=2.5, tokens_per_second=60_000.0, eta=2242.0,
        elapsed=40.0, max_updates=100_000, run_eta=37_678.0)])
    assert "Update 5,805/100,000 | Epoch 2/18" in text
    assert "ETA: 37m22s | run ETA: 10h27m58s" in text
    last_epoch = printed([ev.BatchProgress(
        epoch=18, epochs=18, batch=100, batches=5705, step=99_990, loss=3.2, avg_loss=3.5,
        lr=0.0001, batches_per_second=2.5, tokens_per_second=60_000.0, eta=4.0,
        elapsed=40.0, max_updates=100_000, run_eta=4.0)])
    assert "ETA: 4.0s" in last_epoch and "run ETA" not in last_epoch
