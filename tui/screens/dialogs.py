"""A yes/no confirmation (stop, quit while running, resume from a checkpoint; keys y / n / Esc)
and a question with a few answers, each with its key. Both keep the footer, with their keys."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Static


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n", "answer(False)", "No"),
        Binding("escape", "answer(False)", "Cancel"),
    ]

    def __init__(self, question: str, yes: str = "Yes", no: str = "Cancel") -> None:
        super().__init__()
        self.question, self.yes, self.no = question, yes, no

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.question, id="question")
            with Horizontal(id="answers"):
                yield Button(f"{self.yes} (y)", id="yes", variant="error", compact=True)
                yield Button(f"{self.no} (n)", id="no", compact=True)
        yield Footer()  # the footer vanished under dialogs: their keys show here

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()  # Enter alone never confirms something drastic

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class ChoiceScreen(ModalScreen[str | None]):
    """A question with a few answers, each with its key (Esc: None, nothing done). The first
    answer has the focus only when it is harmless; Enter alone never does something drastic."""

    BINDINGS = [Binding("escape", "choose(None)", "Cancel")]

    def __init__(self, question: str, choices: list[tuple[str, str, str]]) -> None:
        """``choices``: (value, label, key), e.g. ("leave", "Leave it running", "l")."""
        super().__init__()
        self.question, self.choices = question, choices
        for value, label, key in choices:  # real bindings, so the footer shows them
            self._bindings.bind(key, f"choose({value!r})", label)

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.question, id="question")
            with Horizontal(id="answers"):
                for value, label, key in self.choices:
                    yield Button(f"{label} ({key})", id=f"choice-{value}", compact=True)
                yield Button("Cancel (Esc)", id="choice-cancel", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#choice-cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        value = (event.button.id or "").removeprefix("choice-")
        self.dismiss(None if value == "cancel" else value)

    def action_choose(self, value: str | None) -> None:
        self.dismiss(value)
