"""Tokenizer panel: word counting, merge progress, merges per second (now and its history); and
the other prep stages' progress while they run (WMT14 download, reading pairs, encoding)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

from engine.events import DataProgress, DownloadProgress, EncodeProgress
from tui.format import bar_line, count, duration, percent, rate, short_count, size
from tui.state import DashboardState, Status
from tui.widgets.panel import StateView, set_display, show_text

# the stage's totals already on screen (or of no use to a reader here)
SHOWN_ABOVE = {"kind", "vocab_size", "merges", "seconds", "reused", "path"}


class TokenizerPanel(StateView, Vertical):
    parts = ("tokenizer", "status")  # paused reads differently
    min_seconds = 0.5

    def compose(self) -> ComposeResult:
        yield Static(id="tokenizer-text")
        yield Sparkline([], summary_function=max, id="merge-rate")

    def on_mount(self) -> None:
        self.border_title = "Tokenizer"

    def draw(self, state: DashboardState) -> None:
        width = self.content_size.width or 40
        text = Text(no_wrap=True, overflow="ellipsis")
        words, merges = state.words, state.merges
        stage = state.stages.get("tokenizer")
        if state.prep is not None:
            prep_lines(text, state.prep, width)
        elif words is None and merges is None:
            if stage is not None and stage.status == "reused":
                text.append("tokenizer.json reused from an earlier run\n")
            else:
                text.append("waiting for the tokenizer stage\n", style="dim")
        if words is not None:
            fraction = words.done / words.total if words.total else None
            suffix = (f"{percent(words.done, words.total)} "
                      f"{short_count(words.done)}/{short_count(words.total)}")
            text.append(bar_line("Words  ", fraction, suffix, width) + "\n")
            if words.done < words.total:
                text.append(f"       {rate(words.per_second, 'sentences')}\n")
        if merges is not None:
            fraction = merges.merges / merges.target_merges if merges.target_merges else None
            suffix = (f"{percent(merges.merges, merges.target_merges)} "
                      f"{count(merges.merges)}/{count(merges.target_merges)}")
            text.append(bar_line("Merges ", fraction, suffix, width) + "\n")
            language = f"  [{merges.language}]" if merges.language else ""
            text.append(f"Vocab  {count(merges.vocab_size)}/{count(merges.target_vocab)}{language}\n")
            if state.status == Status.PAUSED and merges.merges < merges.target_merges:
                text.append("Speed  paused  ETA paused\n")
            else:
                text.append(f"Speed  {rate(state.merge_rate(), 'merges')}  "
                            f"ETA {duration(merges.eta)}\n")
        extra = {k: v for k, v in (stage.info if stage else {}).items() if k not in SHOWN_ABOVE}
        if extra:
            text.append("  ".join(f"{k.replace('_', ' ')} {v:,}" if isinstance(v, int)
                                  else f"{k.replace('_', ' ')} {v}" for k, v in extra.items()))
        text.rstrip()
        show_text(self.query_one("#tokenizer-text", Static), text)
        sparkline = self.query_one("#merge-rate", Sparkline)
        rates = state.merge_rates.points()[1]
        sparkline.data = rates
        set_display(sparkline, len(rates) >= 4)  # a history, not a stage over in a blink


def prep_lines(text: Text, e: DataProgress | DownloadProgress | EncodeProgress, width: int) -> None:
    """A bar (when the total is known), then speed and ETA: what the data and encode stages
    report while they run."""
    if isinstance(e, EncodeProgress):
        suffix = f"{percent(e.done, e.total)} {short_count(e.done)}/{short_count(e.total)}"
        text.append(bar_line("Encode ", e.done / e.total if e.total else None, suffix, width)
                    + "\n")
        text.append(f"       {e.split}  {rate(e.per_second, 'pairs')}  ETA {duration(e.eta)}\n")
    elif isinstance(e, DownloadProgress):
        amount = size if e.unit == "B" else short_count
        done = amount(e.done) + (f"/{amount(e.total)}" if e.total else "")
        if e.total:
            text.append(bar_line("Fetch  ", e.done / e.total, f"{percent(e.done, e.total)} {done}",
                                 width) + "\n")
        else:
            text.append(f"Fetch  {done}\n")
        speed = f"{size(e.per_second)}/s" if e.unit == "B" else rate(e.per_second, e.unit)
        eta = f"  ETA {duration(e.eta)}" if e.eta and not e.final else ""
        text.append(f"       {e.what}  {speed}{eta}\n")
    else:
        if e.total:
            suffix = f"{percent(e.pairs, e.total)} {short_count(e.pairs)}/{short_count(e.total)}"
            text.append(bar_line("Read   ", e.pairs / e.total, suffix, width) + "\n")
        else:
            text.append(f"Read   {short_count(e.pairs)} pairs\n")
        text.append(f"       {e.split}  {rate(e.per_second, 'pairs')}\n")
