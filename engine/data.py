"""Data sources: the built-in sample, local parallel files, WMT14 through `datasets`.

Every source yields one ``Corpus``: train, valid and test lists of (source, target) pairs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

Pair = tuple[str, str]


@dataclass
class Corpus:
    train: list[Pair]
    valid: list[Pair]
    test: list[Pair]
    src_lang: str = "en"
    tgt_lang: str = "de"
    _fingerprint: str = field(default="", repr=False, compare=False)

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "valid": len(self.valid), "test": len(self.test)}

    def fingerprint(self) -> str:
        """sha256 of every pair of every split: what caches keyed on the data compare."""
        if not self._fingerprint:
            digest = hashlib.sha256(f"{self.src_lang}-{self.tgt_lang}".encode())
            for name in ("train", "valid", "test"):
                digest.update(f"\n#{name}\n".encode())
                for src, tgt in getattr(self, name):
                    digest.update(src.encode("utf-8", "surrogatepass") + b"\t"
                                  + tgt.encode("utf-8", "surrogatepass") + b"\n")
            self._fingerprint = digest.hexdigest()
        return self._fingerprint
