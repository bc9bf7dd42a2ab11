"""The tokenizer stage: train the run's tokenizer(s), or reuse them, or use a given file.

A run directory's tokenizers are ``tokenizer.json`` (shared) or ``tokenizer.<lang>.json``, with
``tokenizer.meta.json`` beside them: the reuse key (recipe, corpus fingerprint, settings). A run
whose key matches reuses the files instead of training again.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from tokenizers import Tokenizer

from engine import atomic
from engine.control import RunControl
from engine.data.corpus import Corpus, PairFiles, write_pair_files
from engine.errors import DataError, EngineError
from engine.events import Emit
from engine.stages import StageResult
from engine.tokenizer.recipes import RECIPE
from engine.tokenizer.supervisor import ChildTraining
from engine.vocab import SPECIALS

if TYPE_CHECKING:
    from engine.config import RunConfig, TokenizerConfig

META_FILE = "tokenizer.meta.json"


@dataclass
class TokenizerSet:
    src: Tokenizer
    tgt: Tokenizer  # the same object as src when shared
    shared: bool
    files: list[Path]  # the tokenizer json files in the run dir


# --- files ---------------------------------------------------------------------------------


def check_tokenizer_file(path: Path, what: str = "") -> Tokenizer:
    """Load a tokenizer.json and check the special tokens; a bad file is a one-line error."""
    where = what or str(path)
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception for any parse error
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise EngineError(f"{where}: not a valid tokenizer.json ({reason})") from None
    found = [tokenizer.id_to_token(i) for i in range(len(SPECIALS))]
    if found != SPECIALS:
        raise EngineError(f"{where}: ids 0-3 must be the special tokens {' '.join(SPECIALS)}, "
                          f"found {' '.join(str(t) for t in found)}")
    return tokenizer


def tokenizer_files(run_dir: Path, shared: bool, src_lang: str, tgt_lang: str) -> list[Path]:
    if shared:
        return [Path(run_dir) / "tokenizer.json"]
    return [Path(run_dir) / f"tokenizer.{lang}.json" for lang in (src_lang, tgt_lang)]


def load_tokenizer_set(run_dir: Path, config: "RunConfig") -> TokenizerSet:
    """The tokenizers an earlier run left in ``run_dir`` (for resuming training)."""
    shared = config.tokenizer.shared or bool(config.tokenizer.path)
    files = tokenizer_files(run_dir, shared, config.data.src_lang, config.data.tgt_lang)
    for path in files:
        if not path.is_file():
            raise EngineError(f"{path}: tokenizer file not found (run the tokenizer stage first)")
    loaded = [check_tokenizer_file(path) for path in files]
    return TokenizerSet(src=loaded[0], tgt=loaded[-1], shared=shared, files=files)


# --- the stage -----------------------------------------------------------------------------


def run_tokenizer_stage(settings: "TokenizerConfig", corpus: Corpus, run_dir: Path, emit: Emit,
                        control: RunControl) -> StageResult[TokenizerSet]:
    started = time.monotonic()
    run_dir = Path(run_dir)
    if settings.path:
        return _use_given(run_dir, Path(settings.path).expanduser(), started)

    files = tokenizer_files(run_dir, settings.shared, corpus.src_lang, corpus.tgt_lang)
    key = {"recipe": RECIPE, "corpus": corpus.fingerprint(), "kind": settings.kind,
           "vocab_size": settings.vocab_size, "shared": settings.shared,
           "min_frequency": settings.min_frequency,
           "languages": [corpus.src_lang, corpus.tgt_lang]}
    reused = _reuse(run_dir, key, files)
    if reused is not None:
        loaded, info = reused
        info = {**info, "seconds": round(time.monotonic() - started, 3), "reused": True}
        return StageResult(output=TokenizerSet(src=loaded[0], tgt=loaded[-1],
                                               shared=settings.shared, files=files),
                           info=info, reused=True)

    if not corpus.train:
        raise DataError("data: the training split is empty; the tokenizer needs sentences to "
                        "learn from")
    (run_dir / META_FILE).unlink(missing_ok=True)  # what follows overwrites the old files
    with _text_files(corpus, run_dir) as text:
        if settings.shared:
            sides = [("", [text.src, text.tgt], text.chars[0] | text.chars[1])]
        else:
            sides = [(corpus.src_lang, [text.src], text.chars[0]),
                     (corpus.tgt_lang, [text.tgt], text.chars[1])]
        trained, results = [], []
        for (language, text_files, chars), path in zip(sides, files):
            training = ChildTraining(settings, emit, control, text_files,
                                     len(text) * len(text_files), chars, path, language)
            results.append(training.run())
            trained.append(check_tokenizer_file(path))

    info = _totals(results, settings.kind, [lang for lang, _, _ in sides])
    info["seconds"] = round(time.monotonic() - started, 3)
    info["reused"] = False
    atomic.write_text(run_dir / META_FILE, json.dumps(
        {"key": key, "files": [p.name for p in files], "info": info}, indent=2) + "\n")
    return StageResult(output=TokenizerSet(src=trained[0], tgt=trained[-1],
                                           shared=settings.shared, files=files), info=info)


@contextmanager
def _text_files(corpus: Corpus, run_dir: Path) -> Iterator[PairFiles]:
    """The training pairs as text files: the data stage's, or (pairs in memory, as in tests and
    benchmarks) written to a temporary folder in the run directory for this training only."""
    if isinstance(corpus.train, PairFiles):
        yield corpus.train
        return
    with tempfile.TemporaryDirectory(prefix=".tokenizer-text-", dir=run_dir) as folder:
        yield write_pair_files(corpus.train, Path(folder), corpus.src_lang, corpus.tgt_lang)


def _totals(results: list[dict[str, int]], kind: str, languages: list[str]) -> dict[str, Any]:
    info: dict[str, Any] = {"kind": kind}
    for key in ("vocab_size", "merges", "unique_words", "alphabet"):
        info[key] = sum(result[key] for result in results)
    if len(results) > 1:  # per language: the sums above, and each vocabulary's size
        for language, result in zip(languages, results):
            info[f"vocab_size_{language}"] = result["vocab_size"]
    return info


def _reuse(run_dir: Path, key: dict[str, Any],
           files: list[Path]) -> tuple[list[Tokenizer], dict[str, Any]] | None:
    try:
        meta = json.loads((run_dir / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if meta.get("key") != key or not all(path.is_file() for path in files):
        return None
    try:
        loaded = [check_tokenizer_file(path) for path in files]
    except EngineError:
        return None  # damaged since: train again
    return loaded, dict(meta.get("info", {}))


def _use_given(run_dir: Path, path: Path, started: float) -> StageResult[TokenizerSet]:
    """``tokenizer.path``: one given tokenizer.json for both sides, copied into the run dir."""
    tokenizer = check_tokenizer_file(path, f"[tokenizer] path = {str(path)!r}")
    target = run_dir / "tokenizer.json"
    if path.resolve() != target.resolve():
        with open(path, "rb") as source, atomic.atomic_file(target) as copy:
            shutil.copyfileobj(source, copy)
    (run_dir / META_FILE).unlink(missing_ok=True)
    model = json.loads(tokenizer.to_str()).get("model", {}).get("type", "?")
    info = {"kind": str(model).lower(), "path": str(path), "vocab_size": tokenizer.get_vocab_size(),
            "seconds": round(time.monotonic() - started, 3), "reused": True}
    return StageResult(output=TokenizerSet(src=tokenizer, tgt=tokenizer, shared=True,
                                           files=[target]), info=info, reused=True)

