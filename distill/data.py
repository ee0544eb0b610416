"""The prepare stage: load examples, split them, validate them, write them.

Splits written to the prepared folder:

- ``gold_train`` / ``gold_val`` / ``gold_test``: the small labelled gold set.
- ``transfer``: unlabelled inputs the teacher will label.
- ``reference``: texts from the pool the traffic comes from that nothing trains on (``true_label`` kept
  where known): the drift monitor's reference for the champion's outputs. Only where the traffic is not
  drawn like the gold set (``per_label``: a balanced gold set, traffic with the data's own label mix);
  empty otherwise, and the monitor then uses the held-out gold rows.
- ``production``: simulated production traffic in windows; the last
  ``shifted_windows`` windows are domain-shifted. Ground truth is kept in
  ``true_label`` (it "arrives later"); ``label`` stays empty.

One module on purpose: one stage (read, check, split, write), whose split rules read best side by
side.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from distill import contracts
from distill.augment import augment_texts
from distill.config import DataConfig, PipelineConfig
from distill.io import atomic_dir, write_json

log = logging.getLogger("distill")

SPLITS = ("gold_train", "gold_val", "gold_test", "transfer", "reference", "production")
USER_SPLIT_NAMES = {
    "train": "gold_train", "training": "gold_train",
    "val": "gold_val", "valid": "gold_val", "validation": "gold_val", "dev": "gold_val",
    "test": "gold_test",
}
BUILTIN_TRANSFER_SIZE = 3000  # the built-in intent scenario's unlabelled pool (data.transfer_size: null)
# Labels (and texts) are read as the file holds them: a CSV cell is a string ("None", "NA" and
# "001" stay labels, an empty cell is a missing label), and JSON values are not type-guessed.
READERS = {".csv": lambda p: pd.read_csv(p, dtype=str, keep_default_na=False, na_values=[""]),
           ".jsonl": lambda p: pd.read_json(p, lines=True, dtype=False),
           ".json": lambda p: pd.read_json(p, dtype=False), ".parquet": pd.read_parquet}


class DataError(ValueError):
    """The input data cannot be used; the message names the file and what to fix."""


@dataclass
class SplitReport:
    """What prepare used and what it left out, and why (``report.json`` beside the splits)."""

    gold: str                  # all | per_label | split column: how the labelled rows were used
    rows_read: int
    labelled: int              # distinct labelled texts
    unlabelled: int            # distinct texts without a label
    augmented: int             # edited copies of training texts added to the transfer set
    left_out: dict[str, int]   # why -> rows
    notes: list[str]


@dataclass
class PrepareResult:
    out_dir: Path
    labels: list[str]
    sizes: dict[str, int]
    source: str
    report: SplitReport


def load_examples(cfg: DataConfig) -> pd.DataFrame:
    """Read the user's file into columns ``text``, ``label`` (+ ``split``, slice columns)."""
    path = Path(cfg.path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found (set data.path in params.yaml to a CSV, JSONL or Parquet file)")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {sorted(READERS)}")
    check_not_binary(path)
    if path.suffix.lower() == ".jsonl":
        check_jsonl(path)
    elif path.suffix.lower() == ".csv":
        check_csv_header(path)
    try:
        frame = reader(path)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the file as UTF-8 "
                        "(e.g. iconv -f latin1 -t utf-8)") from None
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: could not be read as {path.suffix}: {exc}") from None
    if frame.empty:
        raise DataError(f"{path}: the file holds no rows")
    for key, column in (("data.text_column", cfg.text_column), ("data.label_column", cfg.label_column)):
        if column not in frame.columns:
            raise DataError(
                f"{path}: column {column!r} ({key}) not found; the file has columns {list(frame.columns)}"
            )
    missing = [c for c in cfg.slice_columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: slice columns {missing} (data.slice_columns) not found")
    keep = {cfg.text_column: "text", cfg.label_column: "label"}
    if "split" in frame.columns:
        keep["split"] = "split"
    out = frame[list(keep) + cfg.slice_columns].rename(columns=keep)
    check_text_values(out["text"], path, cfg.text_column)
    texts = out["text"].astype("string")
    # A text of only spaces or invisible characters is an empty text (refused by the raw contract).
    out["text"] = texts.mask((texts.str.replace(BLANK, "", regex=True) == "").fillna(False), "")
    # Every text, labelled or not (the raw contract sees the labelled ones; unlabelled ones feed the
    # transfer set and the simulated production traffic).
    long_ = (texts.str.len() > cfg.max_text_chars).fillna(False).to_numpy()
    if long_.any():
        row = int(np.flatnonzero(long_)[0])
        raise DataError(f"{path}: {int(long_.sum())} texts are longer than data.max_text_chars "
                        f"({cfg.max_text_chars:,} characters), the first at data row {row + 1} "
                        f"({len(texts.iloc[row]):,}); shorten or drop them, or raise data.max_text_chars")
    out["label"] = as_label_strings(out["label"])
    check_labels(out, path)
    return out


BLANK = r"[\s\u200b\u200c\u200d\u2060\ufeff]+"  # whitespace and the zero-width characters
MAGIC = {b"PK\x03\x04": "a zip archive (an .xlsx or .docx workbook is one)", b"\x1f\x8b": "gzip-compressed",
         b"\xd0\xcf\x11\xe0": "an old Office (.xls) file", b"%PDF": "a PDF"}


def check_not_binary(path: Path) -> None:
    """Refuse a binary file named like text (an Excel workbook saved as .csv), saying what it is."""
    if path.suffix.lower() == ".parquet":
        return
    with path.open("rb") as handle:
        head = handle.read(8)
    for magic, what in MAGIC.items():
        if head.startswith(magic):
            raise DataError(f"{path}: the file is {what}, not {path.suffix} text; export it as a UTF-8 "
                            f"{path.suffix} file (or decompress it) and point data.path at that")


def check_csv_header(path: Path) -> None:
    """Refuse a CSV header that names a column twice (pandas would rename the second one silently)."""
    import csv

    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        header = next(csv.reader(handle), [])
    seen: dict[str, int] = {}
    for position, name in enumerate(header, start=1):
        if name in seen:
            raise DataError(f"{path}: the header names column {name!r} twice (columns {seen[name]} and "
                            f"{position}); rename one of them")
        seen[name] = position


def check_text_values(texts: pd.Series, path: Path, column: str) -> None:
    """Refuse a text column that holds lists, mappings or arrays (a Parquet list or struct column)."""
    nested = texts.map(lambda v: isinstance(v, (list, tuple, dict, set, np.ndarray)))
    if nested.any():
        row = int(np.flatnonzero(nested.to_numpy())[0])
        kind = type(texts.iloc[row]).__name__
        raise DataError(f"{path}: column {column!r} (data.text_column) holds {kind} values, not text (first at "
                        f"data row {row + 1}); give a column of strings")


def check_jsonl(path: Path) -> None:
    """Name the first line of a JSONL file that is not a JSON object."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}: line {number} is not UTF-8 text ({exc.reason}); save the file as "
                                "UTF-8") from None
            if not line:
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {number} is not valid JSON ({exc.msg} at column {exc.colno}); "
                                "each line must hold one JSON object") from None
            if not isinstance(value, dict):
                raise DataError(f"{path}: line {number} holds a JSON {type(value).__name__}, not an object "
                                "with the text and label fields")


def as_label_strings(labels: pd.Series) -> pd.Series:
    """Labels as strings; whole-number floats (an integer column with gaps) lose their '.0'."""
    if pd.api.types.is_float_dtype(labels):
        whole = labels.dropna()
        if len(whole) and (whole == whole.round()).all():
            labels = labels.astype("Int64")
    return labels.astype("string")


def check_labels(frame: pd.DataFrame, path: Path) -> None:
    """Refuse a single class and texts labelled twice with different labels."""
    labelled = frame[frame["label"].notna() & frame["text"].notna()]
    if labelled.empty:
        raise DataError(f"{path}: no row has a label; the gold set needs labelled examples "
                        "(check data.label_column)")
    classes = sorted(labelled["label"].unique())
    warn_near_duplicate_labels(classes, path)
    if len(classes) == 1:
        raise DataError(f"{path}: every labelled row has the label {classes[0]!r}; a classifier needs at least "
                        "two labels (check data.label_column)")
    per_text = labelled.groupby("text")["label"].nunique()
    clashes = per_text[per_text > 1]
    if len(clashes):
        text = clashes.index[0]
        rows = [int(i) + 1 for i in labelled.index[labelled["text"] == text]]
        found = sorted(labelled.loc[labelled["text"] == text, "label"].unique())
        raise DataError(f"{path}: {len(clashes)} texts carry conflicting labels, e.g. data rows {rows} "
                        f"(counting from 1) hold {str(text)[:60]!r} as {found}; keep one label per text")


def warn_near_duplicate_labels(classes: list[str], path: Path) -> None:
    """Labels that differ only in case or surrounding spaces are kept apart, with a warning."""
    groups: dict[str, list[str]] = {}
    for label in classes:
        groups.setdefault(str(label).strip().casefold(), []).append(str(label))
    for variants in (v for v in groups.values() if len(v) > 1):
        log.warning("%s: labels %s differ only in case or spaces; they are kept as %d separate classes (fix the "
                    "file if they are one)", path, variants, len(variants))


def check_label_counts(labelled: pd.DataFrame, source: str) -> None:
    """Every label needs one example per gold split; a label column of unique values is no label column."""
    counts = labelled["label"].value_counts()
    too_small = counts[counts < 3]
    if not len(too_small):
        return
    if len(too_small) > len(counts) / 2:
        raise DataError(
            f"{source}: {len(too_small)} of {len(counts)} labels have fewer than 3 examples (e.g. "
            f"{dict(too_small.head(3))}); a column of mostly unique values looks like an id or a free-text "
            "column, not a label: check data.label_column")
    raise DataError(
        f"{source}: labels {dict(too_small.head(10))} have fewer than 3 examples; each needs one per gold split "
        "(add examples or drop the label)")


def split_gold(labelled: pd.DataFrame, cfg: DataConfig, rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    """per_label: take up to ``gold_per_label`` examples per label and split them train/val/test."""
    parts: dict[str, list[pd.DataFrame]] = {"gold_train": [], "gold_val": [], "gold_test": [], "rest": []}
    for _, group in labelled.groupby("label", sort=True):
        group = group.iloc[rng.permutation(len(group))]
        n = min(len(group), cfg.gold_per_label)
        n_train = max(1, round(n * cfg.gold_fractions[0]))
        n_val = max(1, round(n * cfg.gold_fractions[1]))
        n_train = min(n_train, n - n_val - 1)
        parts["gold_train"].append(group.iloc[:n_train])
        parts["gold_val"].append(group.iloc[n_train:n_train + n_val])
        parts["gold_test"].append(group.iloc[n_train + n_val:n])
        parts["rest"].append(group.iloc[n:])
    return {name: pd.concat(frames, ignore_index=True) for name, frames in parts.items()}


def held_out_sizes(n: int, cfg: DataConfig) -> tuple[int, int]:
    """all: (test rows, validation rows) for ``n`` labelled rows, from the shares and their caps."""
    return min(round(n * cfg.test_share), cfg.max_test_rows), min(round(n * cfg.val_share), cfg.max_val_rows)


def split_all(labelled: pd.DataFrame, cfg: DataConfig, rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    """all: stratified test and validation sets sized from the data; every other labelled row trains.

    Each label keeps its share of the held-out rows (at least one in each, and one to train on), so
    a rare label is tested and a frequent one does not crowd the test set.
    """
    n_test, n_val = held_out_sizes(len(labelled), cfg)
    parts: dict[str, list[pd.DataFrame]] = {"gold_train": [], "gold_val": [], "gold_test": []}
    for _, group in labelled.groupby("label", sort=True):
        group = group.iloc[rng.permutation(len(group))]
        share = len(group) / len(labelled)
        k_test = max(1, round(share * n_test))
        k_val = max(1, min(round(share * n_val), len(group) - k_test - 1))
        k_test = min(k_test, len(group) - k_val - 1)
        parts["gold_test"].append(group.iloc[:k_test])
        parts["gold_val"].append(group.iloc[k_test:k_test + k_val])
        parts["gold_train"].append(group.iloc[k_test + k_val:])
    return {name: pd.concat(frames, ignore_index=True) for name, frames in parts.items()}


def sample_stratified(frame: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """About ``n`` rows of ``frame`` keeping each label's share (and at least one row of each label)."""
    if len(frame) <= n:
        return frame
    keep = []
    for _, group in frame.groupby("label", sort=True):
        k = max(1, int(len(group) * n / len(frame)))
        keep.append(group.iloc[rng.permutation(len(group))[:k]])
    return pd.concat(keep, ignore_index=True)


def check_user_splits(frame: pd.DataFrame, source: str) -> dict[str, pd.DataFrame]:
    """Use the user's own ``split`` column; every evaluated label must occur in training."""
    names = frame["split"].astype("string").str.lower().map(USER_SPLIT_NAMES)
    unknown = sorted(frame.loc[names.isna() & frame["label"].notna(), "split"].astype(str).unique())
    if unknown:
        raise DataError(f"{source}: unknown split values {unknown}; use train / validation / test")
    parts = {name: frame[names == name].drop(columns="split") for name in ("gold_train", "gold_val", "gold_test")}
    for name in ("gold_val", "gold_test"):
        unseen = sorted(set(parts[name]["label"]) - set(parts["gold_train"]["label"]))
        if unseen:
            raise DataError(f"{source}: labels {unseen} occur in the {name} split but never in training")
    parts["rest"] = frame[names.isna()].drop(columns="split")
    return parts


def take_windows(pool: pd.DataFrame, n_windows: int, size: int, start: int, shifted: bool,
                 rng: np.random.Generator) -> pd.DataFrame:
    """Cut ``n_windows`` windows of ``size`` requests from ``pool`` (fewer if it runs out)."""
    n = min(len(pool), n_windows * size)
    rows = pool.iloc[rng.permutation(len(pool))[:n]].copy()
    rows["window"] = start + np.arange(n) // size
    rows["shifted"] = shifted
    return rows


def augment_count(cfg: DataConfig, n_train: int, n_transfer: int) -> int:
    """How many augmented texts join the transfer set (``data.augment``), within ``data.distill_rows``."""
    room = max(cfg.distill_rows - n_train - n_transfer, 0)
    wanted = 2 * n_train - n_transfer if cfg.augment is None else round(cfg.augment * n_train)
    return max(min(wanted, room), 0)


def add_augmented(transfer: pd.DataFrame, parts: dict[str, pd.DataFrame], cfg: DataConfig, seed: int,
                  notes: list[str]) -> pd.DataFrame:
    """The transfer set plus edited copies of the gold training texts (column ``augmented``)."""
    transfer = transfer.assign(augmented=False)
    n = augment_count(cfg, len(parts["gold_train"]), len(transfer))
    if not n:
        return transfer
    taken = set(pd.concat([frame["text"] for frame in parts.values()] + [transfer["text"]]).astype(str))
    texts = augment_texts(parts["gold_train"]["text"].astype(str).tolist(), n, seed, taken)
    notes.append(f"{len(texts)} edited copies of gold training texts join the transfer set for the teacher to "
                 "label (data.augment; 0 turns this off)")
    return pd.concat([transfer, pd.DataFrame({"text": pd.Series(texts, dtype="string"), "augmented": True})],
                     ignore_index=True)


def gold_mode(cfg: DataConfig, builtin: bool) -> str:
    """How labelled rows are used: ``data.gold``, with auto resolved for the source."""
    if cfg.gold != "auto":
        return cfg.gold
    return "per_label" if builtin else "all"


def split_examples(examples: pd.DataFrame, shifted_pool: pd.DataFrame | None, cfg: DataConfig,
                   seed: int, source: str, builtin: bool = False) -> tuple[dict[str, pd.DataFrame], SplitReport]:
    """Split examples into the five prepared splits, and say what was used and what was left out."""
    rng = np.random.default_rng(seed)
    rows_read = len(examples)
    examples = examples.drop_duplicates("text").reset_index(drop=True)
    left_out: dict[str, int] = {}
    if rows_read > len(examples):
        left_out["duplicate texts (the first of each is kept)"] = rows_read - len(examples)
    labelled, unlabelled = examples[examples["label"].notna()], examples[examples["label"].isna()]
    if labelled.empty:
        raise DataError(f"{source}: no row has a label; the gold set needs labelled examples")
    notes: list[str] = []
    if "split" in examples.columns and examples["split"].notna().any():
        mode, parts = "split column", check_user_splits(examples, source)
    else:
        check_label_counts(labelled, source)
        mode = gold_mode(cfg, builtin)
        if mode == "per_label":
            parts = split_gold(labelled, cfg, rng)
            if len(parts["rest"]):
                notes.append(f"{len(parts['rest'])} labelled rows beyond data.gold_per_label={cfg.gold_per_label} "
                             "are used without their labels (transfer set, simulated traffic); data.gold: all "
                             "uses every label")
            parts["rest"] = pd.concat([parts["rest"], unlabelled], ignore_index=True)
        else:
            parts = split_all(labelled, cfg, rng) | {"rest": unlabelled}
    rest = parts.pop("rest").sample(frac=1.0, random_state=seed).reset_index(drop=True)
    if "emerging" in examples.columns:
        # Emerging intents (default data): gold examples only; the rest arrives with the shifted traffic.
        emerging = rest["emerging"].fillna(False).astype(bool)
        if shifted_pool is not None:
            shifted_pool = pd.concat([shifted_pool, rest[emerging]], ignore_index=True)
        rest = rest[~emerging].reset_index(drop=True)
        parts = {name: frame.drop(columns="emerging") for name, frame in parts.items()}
        rest = rest.drop(columns="emerging")
    if len(parts["gold_train"]) > cfg.distill_rows:
        kept = sample_stratified(parts["gold_train"], cfg.distill_rows, rng)
        left_out[f"labelled training rows over data.distill_rows={cfg.distill_rows}"] = (
            len(parts["gold_train"]) - len(kept))
        parts["gold_train"] = kept
    budget = cfg.distill_rows - len(parts["gold_train"])
    if cfg.transfer_size is not None or builtin:
        budget = min(budget, cfg.transfer_size or BUILTIN_TRANSFER_SIZE)
    reference = pd.DataFrame({"text": pd.Series(dtype="string"), "label": pd.Series(dtype="string")})
    if mode == "per_label":
        n_prod = min(cfg.production_windows * cfg.window_size, len(rest) // 3)
        production = take_windows(rest.iloc[:n_prod], cfg.production_windows, cfg.window_size, 0, False, rng)
        rest = rest.iloc[n_prod:]
        # The traffic has the data's own label mix, the gold set a balanced one: the champion's outputs on
        # held-out gold are no reference for it. Two windows' worth of the traffic's pool, from the end of the
        # shuffled pool, where the transfer budget leaves rows out (the transfer set is then what it would be
        # without a reference), else at most a tenth of the transfer rows.
        n_ref = min(2 * cfg.window_size, max(len(rest) - budget, len(rest) // 10))
        reference, rest = rest.iloc[len(rest) - n_ref:], rest.iloc[:len(rest) - n_ref]
        reference = reference.drop(columns="augmented", errors="ignore")
    else:
        # No spare labelled rows: the simulated traffic replays test rows (never trained on, labels known).
        production = take_windows(parts["gold_test"], cfg.production_windows, cfg.window_size, 0, False, rng)
        notes.append(f"simulated production traffic replays {len(production)} test rows")
    transfer = rest.iloc[:max(budget, 0)].copy()
    if len(rest) > len(transfer):
        left_out["unlabelled texts over the transfer budget (data.transfer_size, data.distill_rows)"] = (
            len(rest) - len(transfer))
    transfer = add_augmented(transfer, parts, cfg, seed, notes)
    if shifted_pool is not None and cfg.shifted_windows:
        taken = pd.concat([frame["text"] for frame in parts.values()]
                          + [production["text"], transfer["text"], reference["text"]])
        shifted_pool = shifted_pool[~shifted_pool["text"].isin(taken)].drop_duplicates("text")
        shifted_pool = shifted_pool.drop(columns="emerging", errors="ignore")
        shifted = take_windows(shifted_pool, cfg.shifted_windows, cfg.window_size,
                               int(production["window"].max()) + 1 if len(production) else 0, True, rng)
        production = pd.concat([production, shifted], ignore_index=True)
    transfer["label"] = pd.NA  # the teacher labels these
    production = production.rename(columns={"label": "true_label"})
    production["label"] = pd.NA
    reference = reference.rename(columns={"label": "true_label"}).assign(label=pd.NA).reset_index(drop=True)
    production["request_id"] = np.arange(len(production))
    report = SplitReport(mode, rows_read, len(labelled), len(unlabelled), int(transfer["augmented"].sum()),
                         left_out, notes)
    return {**parts, "transfer": transfer.reset_index(drop=True), "reference": reference,
            "production": production}, report


def validate_splits(splits: dict[str, pd.DataFrame], labels: list[str], cfg: DataConfig, source: str) -> None:
    """Run the prepared_splits contract over the union of the gold and transfer splits.

    The production split is simulated future traffic; once absorbed into the
    transfer set its texts legitimately occur twice, so it is not part of the union.
    """
    union = pd.concat([frame.assign(split=name)[["text", "label", "split"]].astype("string")
                       for name, frame in splits.items() if name != "production"], ignore_index=True)
    contracts.check_frame(union, "prepared_splits", source=source,
                          parameters={"max_text_chars": cfg.max_text_chars, "label_set": labels})


def read_incoming(incoming_dir: Path | None) -> pd.DataFrame:
    """Unlabelled production traffic collected for re-distillation (data/incoming/*.parquet)."""
    files = sorted(Path(incoming_dir).glob("*.parquet")) if incoming_dir else []
    if not files:
        return pd.DataFrame({"text": pd.Series(dtype="string")})
    frames = [pd.read_parquet(f, columns=["text"]) for f in files]
    return pd.concat(frames, ignore_index=True).drop_duplicates("text")


def add_incoming(splits: dict[str, pd.DataFrame], incoming: pd.DataFrame) -> None:
    """Append new traffic to the transfer split, minus texts already in a gold or transfer split."""
    taken = pd.concat([splits[s]["text"] for s in ("gold_train", "gold_val", "gold_test", "transfer", "reference")])
    new = incoming[~incoming["text"].isin(taken)].assign(label=pd.NA, augmented=False)
    splits["transfer"] = pd.concat([splits["transfer"], new], ignore_index=True)


def run(cfg: PipelineConfig, out_dir: Path, incoming_dir: Path | None = None) -> PrepareResult:
    """Build, split, validate and write the prepared data set.

    Texts under ``incoming_dir`` (production traffic kept by the drift monitor)
    join the transfer set, so a re-distillation learns the shifted domain.
    """
    data_cfg = cfg.data
    if data_cfg.path is None:
        from distill.intents import build_intent_examples, languages

        if data_cfg.language not in languages():
            raise DataError(f"data.language {data_cfg.language!r}: home-assistant-intents has no sentences for it; "
                            f"use one of {', '.join(languages())}, or give your own file (data.path)")
        examples, shifted_pool = build_intent_examples(data_cfg.language, cfg.seed)
        source = f"home-assistant-intents ({data_cfg.language})"
    else:
        examples, shifted_pool, source = load_examples(data_cfg), None, str(data_cfg.path)
    contracts.check_frame(examples.dropna(subset=["label"])[["text", "label"]], "raw_examples", source=source,
                          parameters={"max_text_chars": data_cfg.max_text_chars})
    splits, report = split_examples(examples, shifted_pool, data_cfg, cfg.seed, source, builtin=data_cfg.path is None)
    add_incoming(splits, read_incoming(incoming_dir))
    labels = sorted(splits["gold_train"]["label"].unique())
    validate_splits(splits, labels, data_cfg, source)
    with atomic_dir(out_dir) as tmp:
        for name, frame in splits.items():
            frame.to_parquet(tmp / f"{name}.parquet", index=False)
        write_json(tmp / "labels.json", {"labels": labels, "source": source})
        sizes = {name: len(frame) for name, frame in splits.items()}
        write_json(tmp / "report.json", {"source": source, "labels": len(labels), "splits": sizes,
                                         **asdict(report)})
    return PrepareResult(out_dir, labels, sizes, source, report)


def read_split(prepared: Path, name: str) -> pd.DataFrame:
    """Read one prepared split."""
    return pd.read_parquet(Path(prepared) / f"{name}.parquet")


def read_labels(prepared: Path) -> list[str]:
    """The ordered label set of a prepared data set."""
    return json.loads((Path(prepared) / "labels.json").read_text())["labels"]

