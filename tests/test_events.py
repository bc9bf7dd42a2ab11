"""Events survive the trip through events.jsonl, which is what --attach reads."""

import dataclasses
import json
import threading

import pytest

from engine import events as ev
from engine.eventlog import read_events


def one_of_each() -> list[ev.Event]:
    return [
        ev.RunStarted(run_dir="saved/sample", preset="sample", stages=["data", "tokenizer"]),
        ev.Preflight(device="cpu", device_names=["Some CPU"], device_memory_gb=[], threads=2,
                     disk_free_gb=50.0, disk_needed_gb=0.1),
        ev.StageStarted(stage="data", index=1, total=6),
        ev.StageFinished(stage="data", seconds=0.5, info={"train": 6000, "source": "sample"}),
        ev.Notice(text="dropped 3 pairs", level="warning"),
        ev.DataProgress(split="train", pairs=1000, per_second=5000.0, elapsed=0.2),
        ev.DownloadProgress(what="Downloading data", done=1e6, total=3e6, unit="B",
                            per_second=2e6, eta=1.0, elapsed=0.5),
        ev.EncodeProgress(split="train", done=20000, total=45000, per_second=40000.0, eta=0.6,
                          elapsed=0.5),
        ev.WordCountProgress(done=10, total=20, per_second=100.0, elapsed=0.1),
        ev.MergeProgress(merges=5, target_merges=10, vocab_size=105, target_vocab=110,
                         per_second=50.0, eta=0.1, elapsed=0.1),
        ev.BatchProgress(epoch=1, epochs=2, batch=3, batches=4, step=3, loss=5.0, avg_loss=6.0,
                         lr=1e-4, batches_per_second=2.0, tokens_per_second=900.0, eta=1.0,
                         elapsed=2.0),
        ev.EpochSummary(epoch=1, epochs=2, step=4, train_loss=5.0, train_ppl=148.4, val_loss=4.0,
                        val_ppl=54.6, bleu=None, epoch_seconds=3.0, total_seconds=3.0),
        ev.CheckpointSaved(path="saved/x/checkpoint_last.pt", name="checkpoint_last.pt", epoch=1,
                           step=4, val_loss=4.0, bleu=12.5, size_bytes=1000, saved_at=1.0),
        ev.BatchSkipped(reason="nan", epoch=1, batch=2, tokens=300, in_a_row=1),
        ev.MemorySample(devices=[{"name": "GPU", "used": None, "total": None, "util": None}],
                        torch_allocated=None, torch_reserved=None, torch_peak=None,
                        process_rss=1, system_used=2, system_total=3, max_tokens=4096),
        ev.RunPaused(stage="train"),
        ev.RunResumed(stage="train", paused_seconds=5.0),
        ev.RunFailed(stage="tokenizer", message="child died", details=["line 1"]),
        ev.RunFinished(status="finished", seconds=10.0),
        ev.Alert(kind="finished", text="run saved/x finished: test BLEU 26.8"),
        ev.SampleTranslations(epoch=1, step=4, samples=[
            {"source": "A dog runs.", "reference": "Ein Hund rennt.", "hypothesis": "Ein Hund."}]),
        ev.TestBleu(checkpoint="saved/x/averaged.pt", sentences=3003, sacrebleu=26.8,
                    sacrebleu_signature="nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp",
                    paper_bleu=27.4, paper_signature="nrefs:1|tok:13a+compound-split",
                    beam=4, length_penalty=0.6, seconds=60.0,
                    averaged_from=["checkpoint_update_99000.pt", "checkpoint_update_100000.pt"]),
    ]


def test_an_older_events_file_still_reads():
    # written before max_updates existed: the field takes its default
    line = ('{"event":"BatchProgress","epoch":1,"epochs":2,"batch":3,"batches":4,"step":3,'
            '"loss":5.0,"avg_loss":6.0,"lr":0.0001,"batches_per_second":2.0,'
            '"tokens_per_second":900.0,"eta":1.0,"elapsed":2.0,"time":1.0}')
    assert ev.from_json(line).max_updates == 0


def test_every_event_type_is_covered_here():
    covered = {type(e).__name__ for e in one_of_each()}
    assert covered == set(ev.EVENT_TYPES)


@pytest.mark.parametrize("event", one_of_each(), ids=lambda e: type(e).__name__)
def test_json_round_trip(event):
    line = ev.to_json(event)
    assert json.loads(line)["event"] == type(event).__name__
    assert ev.from_json(line) == event


def test_events_are_frozen():
    event = ev.StageStarted(stage="data", index=1, total=6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.stage = "train"  # type: ignore[misc]


def test_jsonl_writer_from_many_threads_then_read_back(tmp_path):
    path = tmp_path / "events.jsonl"
    writer = ev.JsonlWriter(path)
    threads = [threading.Thread(target=lambda i=i: [writer(ev.Notice(text=f"{i}-{k}"))
                                                     for k in range(200)]) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    events = list(read_events(path))
    assert len(events) == 800
    assert {e.text for e in events} == {f"{i}-{k}" for i in range(4) for k in range(200)}
    assert all("time" in json.loads(line) for line in path.read_text().splitlines())


def test_unknown_event_type_is_an_error():
    with pytest.raises(ValueError, match="unknown event type 'Nope'"):
        ev.from_json('{"event": "Nope"}')
