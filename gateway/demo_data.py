"""Synthetic hospital data for ``stockade demo``, generated with DuckDB SQL.

Each demo hospital gets three Parquet files with the same schema:

- ``patients``: one row per patient (sex, birth year, zip, clinic site, consent,
  insurance, a research pseudonym ``patient_ref``);
- ``screenings``: cancer screening tests (date, age at the test, test, result, tumour
  size of positives);
- ``visits``: hospital visits (date, department, visit type, length of stay, cost).

The populations differ per hospital (:class:`Hospital`): age and sex mix, sites and
their screening rates and positivity, the mix of tests and departments, costs. Every
value is drawn from ``hash(row, stream, seed)``, so the data depends only on the
hospital and the size (identical on every machine and every run, generated in
parallel). :func:`generate_all` writes all hospitals with one progress bar and skips a
hospital whose files for this size and generator version already exist.

>>> round(sum(h.share for h in HOSPITALS), 9)
1.0
>>> sizes(60_000)
TableSizes(patients=10000, screenings=20000, visits=30000)
"""

from __future__ import annotations

import io
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TextIO

import duckdb

#: Bump when the generated data changes, so cached demo data is regenerated.
GENERATOR_VERSION = 1
#: Rows inserted per DuckDB statement: the progress bar's granularity.
CHUNK_ROWS = 250_000


@dataclass(frozen=True)
class Site:
    """A clinic of a hospital: its share of patients, screening uptake and positivity."""

    name: str
    weight: float            # share of the hospital's patients (relative)
    screening_rate: float    # relative number of screenings per patient
    positivity: float        # multiplies the hospital's positive rate
    zip_prefix: str


@dataclass(frozen=True)
class Hospital:
    """How one demo hospital's population is drawn."""

    name: str
    seed: int
    share: float                      # of the demo's --rows
    sites: tuple[Site, ...]
    age_mean: float                   # age in 2024, normal, clipped to 18..100
    age_sd: float
    female_share: float
    consent_rate: float
    positive_rate: float              # base rate of a positive screening
    #: screening test → relative frequency, per sex
    tests_female: tuple[tuple[str, float], ...]
    tests_male: tuple[tuple[str, float], ...]
    #: department → (relative frequency, median cost in USD, share of inpatient stays)
    departments: tuple[tuple[str, float, float, float], ...]
    insurance: tuple[tuple[str, float], ...]
    mean_stay_days: float
    tumor_log_mean: float             # log of the median tumour size (mm) of positives
    ref_prefix: str = field(default="")


COMMON_DEPARTMENTS = (
    ("general_medicine", 0.30, 180.0, 0.10),
    ("oncology", 0.14, 950.0, 0.20),
    ("radiology", 0.16, 420.0, 0.0),
    ("cardiology", 0.12, 650.0, 0.15),
    ("emergency", 0.16, 1200.0, 0.25),
    ("surgery", 0.12, 4800.0, 0.70),
)

HOSPITALS: tuple[Hospital, ...] = (
    Hospital(
        name="st_marys", seed=11, share=0.40,
        sites=(Site("north", 0.35, 1.2, 0.9, "021"), Site("south", 0.25, 0.9, 1.1, "022"),
               Site("east", 0.22, 1.0, 1.0, "023"), Site("west", 0.18, 0.7, 1.3, "024")),
        age_mean=58.0, age_sd=15.0, female_share=0.54, consent_rate=0.92, positive_rate=0.06,
        tests_female=(("mammography", 0.50), ("cervical", 0.20), ("colonoscopy", 0.25),
                      ("lung_ct", 0.05)),
        tests_male=(("psa", 0.45), ("colonoscopy", 0.43), ("lung_ct", 0.12)),
        departments=COMMON_DEPARTMENTS,
        insurance=(("private", 0.55), ("public", 0.40), ("uninsured", 0.05)),
        mean_stay_days=4.0, tumor_log_mean=2.1, ref_prefix="SM",
    ),
    Hospital(
        name="city_general", seed=23, share=0.35,
        sites=(Site("central", 0.50, 1.0, 1.0, "100"), Site("harbour", 0.30, 0.8, 1.4, "101"),
               Site("hills", 0.20, 1.3, 0.7, "102")),
        age_mean=47.0, age_sd=17.0, female_share=0.51, consent_rate=0.85, positive_rate=0.09,
        tests_female=(("mammography", 0.40), ("cervical", 0.35), ("colonoscopy", 0.20),
                      ("lung_ct", 0.05)),
        tests_male=(("psa", 0.35), ("colonoscopy", 0.50), ("lung_ct", 0.15)),
        departments=(("general_medicine", 0.25, 210.0, 0.08), ("oncology", 0.10, 1100.0, 0.25),
                     ("radiology", 0.15, 480.0, 0.0), ("cardiology", 0.10, 700.0, 0.15),
                     ("emergency", 0.30, 1400.0, 0.20), ("surgery", 0.10, 5600.0, 0.75)),
        insurance=(("private", 0.40), ("public", 0.48), ("uninsured", 0.12)),
        mean_stay_days=3.2, tumor_log_mean=2.25, ref_prefix="CG",
    ),
    Hospital(
        name="riverside", seed=37, share=0.25,
        sites=(Site("riverside_main", 0.70, 1.1, 1.0, "551"),
               Site("valley_clinic", 0.30, 0.6, 1.25, "552")),
        age_mean=62.0, age_sd=13.0, female_share=0.50, consent_rate=0.95, positive_rate=0.07,
        tests_female=(("mammography", 0.45), ("cervical", 0.10), ("colonoscopy", 0.30),
                      ("lung_ct", 0.15)),
        tests_male=(("psa", 0.40), ("colonoscopy", 0.35), ("lung_ct", 0.25)),
        departments=(("general_medicine", 0.40, 150.0, 0.12), ("oncology", 0.12, 800.0, 0.15),
                     ("radiology", 0.14, 380.0, 0.0), ("cardiology", 0.14, 560.0, 0.18),
                     ("emergency", 0.12, 1000.0, 0.30), ("surgery", 0.08, 4200.0, 0.65)),
        insurance=(("private", 0.35), ("public", 0.60), ("uninsured", 0.05)),
        mean_stay_days=5.0, tumor_log_mean=2.45, ref_prefix="RV",
    ),
)

#: Relative positivity of each test (multiplies the hospital's and the site's rate).
TEST_POSITIVITY = {"mammography": 1.0, "cervical": 0.6, "colonoscopy": 1.4, "psa": 1.6,
                   "lung_ct": 1.2}


class TableSizes(NamedTuple):
    patients: int
    screenings: int
    visits: int


def sizes(rows: int) -> TableSizes:
    """Split one hospital's ``rows`` over its tables (1 : 2 : 3)."""
    patients = max(rows // 6, 50)
    return TableSizes(patients, max(rows // 3, 100), max(rows // 2, 150))


def hospital_rows(total: int) -> dict[str, int]:
    """Each hospital's share of ``total`` rows."""
    return {h.name: int(total * h.share) for h in HOSPITALS}


# --------------------------------------------------------------------------- SQL pieces

def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _choice(u: str, options: Sequence[tuple[str, float]]) -> str:
    """A CASE expression picking one of ``options`` (name, weight) with uniform ``u``."""
    total = sum(weight for _, weight in options)
    parts, edge = [], 0.0
    for name, weight in options[:-1]:
        edge += weight / total
        parts.append(f"WHEN {u} < {edge:.6f} THEN {_quote(name)}")
    return f"CASE {' '.join(parts)} ELSE {_quote(options[-1][0])} END"


def _lookup(key: str, values: Iterable[tuple[str, float | str]],
            default: float | str = 0.0) -> str:
    """A CASE expression mapping ``key``'s text values to numbers or text."""
    def literal(value: float | str) -> str:
        return _quote(value) if isinstance(value, str) else repr(value)

    whens = " ".join(f"WHEN {_quote(k)} THEN {literal(v)}" for k, v in values)
    return f"CASE {key} {whens} ELSE {literal(default)} END"


def _macros(con: duckdb.DuckDBPyConnection, seed: int) -> None:
    # u: a uniform number in [0, 1) for row i and stream k; z: a standard normal draw.
    con.execute(f"CREATE MACRO u(i, k) AS (hash(i, k, {seed}) % 1000000007) / 1000000007.0")
    con.execute("CREATE MACRO z(i, k) AS sqrt(-2 * ln(1 - u(i, k))) * cos(2 * pi() * u(i, k + 1))")


def _patients_sql(h: Hospital, start: int, stop: int) -> str:
    site_case = _choice("u(range, 4)", [(s.name, s.weight) for s in h.sites])
    zip_prefix = _lookup("site", [(s.name, s.zip_prefix) for s in h.sites], "000")
    return f"""
        SELECT patient_id, sex, 2024 - age AS birth_year,
               {zip_prefix}
                 || lpad(CAST(CAST(floor(u(patient_id, 6) * 100) AS INTEGER) AS VARCHAR), 2, '0')
                 AS zip,
               site, consent, insurance,
               '{h.ref_prefix}-' || upper(substr(md5(CAST(hash(patient_id, {h.seed}, 'ref')
                 AS VARCHAR)), 1, 10)) AS patient_ref
        FROM (
          SELECT range AS patient_id,
                 CASE WHEN u(range, 1) < {h.female_share} THEN 'F' ELSE 'M' END AS sex,
                 CAST(least(100, greatest(18, round({h.age_mean} + {h.age_sd} * z(range, 2))))
                      AS INTEGER) AS age,
                 {site_case} AS site,
                 u(range, 5) < {h.consent_rate} AS consent,
                 {_choice("u(range, 7)", h.insurance)} AS insurance
          FROM range({start}, {stop})
        )"""


def _screening_candidates(h: Hospital, target: int) -> int:
    """Candidate rows to draw so that ``target`` survive each site's acceptance rate."""
    top = max(s.screening_rate for s in h.sites)
    weights = sum(s.weight for s in h.sites)
    mean = sum(s.weight * s.screening_rate for s in h.sites) / weights
    return int(target * top / mean)


def _screenings_sql(h: Hospital, patients: int, start: int, stop: int) -> str:
    top = max(s.screening_rate for s in h.sites)
    accept = _lookup("p.site", [(s.name, s.screening_rate / top) for s in h.sites])
    site_positivity = _lookup("site", [(s.name, s.positivity) for s in h.sites], 1.0)
    test_positivity = _lookup("test", TEST_POSITIVITY.items(), 1.0)
    # Under 40 only cervical screening (women) and colonoscopy (men, high risk) are offered.
    test = ("CASE WHEN p.sex = 'F' AND age < 40 THEN 'cervical' "
            "WHEN age < 40 THEN 'colonoscopy' "
            f"WHEN p.sex = 'F' THEN {_choice('u(c.range, 13)', h.tests_female)} "
            f"ELSE {_choice('u(c.range, 13)', h.tests_male)} END")
    # Positivity grows with age (x2 from 40 to 80) and varies by site and test.
    chance = (f"{h.positive_rate} * {site_positivity} * {test_positivity}"
              " * (0.5 + greatest(age - 40, 0) / 40.0)")
    return f"""
        SELECT screening_id, patient_id, patient_ref, site, screened_on, age, sex, test,
               CASE WHEN u(screening_id, 15) < 0.015 THEN 'inconclusive'
                    WHEN u(screening_id, 16) < {chance} THEN 'positive'
                    ELSE 'negative' END AS result,
               CASE WHEN u(screening_id, 16) < {chance} AND u(screening_id, 15) >= 0.015
                    THEN round(least(60.0, 2 + exp({h.tumor_log_mean}
                                                     + 0.5 * z(screening_id, 17))), 1)
               END AS tumor_size_mm
        FROM (
          SELECT c.range AS screening_id, p.patient_id, p.patient_ref, p.site, p.sex,
                 -- more screenings in later years (the programme grew)
                 DATE '2019-01-01' + CAST(floor(sqrt(u(c.range, 12)) * 2191) AS INTEGER)
                   AS screened_on,
                 CAST(greatest(18, 2024 - p.birth_year - (2024 - year(screened_on)))
                      AS INTEGER) AS age,
                 {test} AS test
          FROM range({start}, {stop}) c
          JOIN patients p ON p.patient_id = CAST(floor(u(c.range, 10) * {patients}) AS BIGINT)
          WHERE u(c.range, 11) < {accept}
        )"""


def _visits_sql(h: Hospital, patients: int, start: int, stop: int) -> str:
    weights = [(name, weight) for name, weight, _, _ in h.departments]
    median = _lookup("department", [(name, cost) for name, _, cost, _ in h.departments])
    inpatient = _lookup("department", [(name, share) for name, _, _, share in h.departments])
    return f"""
        SELECT visit_id, patient_id, patient_ref, site, visited_on, age, department,
               visit_type, length_of_stay,
               round(least(20000.0, {median} * exp(0.5 * z(visit_id, 24))
                                    + length_of_stay * 850.0), 2) AS cost
        FROM (
          SELECT visit_id, patient_id, patient_ref, site, visited_on, age, department,
                 CASE WHEN department = 'emergency' AND u(visit_id, 22) >= {inpatient}
                        THEN 'emergency'
                      WHEN u(visit_id, 22) < {inpatient} THEN 'inpatient'
                      ELSE 'outpatient' END AS visit_type,
                 CASE WHEN u(visit_id, 22) < {inpatient}
                      THEN CAST(least(30, 1 + floor(-ln(1 - u(visit_id, 23))
                                                    * {h.mean_stay_days})) AS INTEGER)
                      ELSE 0 END AS length_of_stay
          FROM (
            SELECT c.range AS visit_id, p.patient_id, p.patient_ref, p.site,
                   DATE '2019-01-01' + CAST(floor(u(c.range, 21) * 2191) AS INTEGER)
                     AS visited_on,
                   CAST(greatest(18, 2024 - p.birth_year - (2024 - year(visited_on)))
                        AS INTEGER) AS age,
                   {_choice("u(c.range, 20)", weights)} AS department
            FROM range({start}, {stop}) c
            JOIN patients p
              ON p.patient_id = CAST(floor(u(c.range, 19) * {patients}) AS BIGINT)
          )
        )"""


# --------------------------------------------------------------------------- progress

class Progress:
    """A progress bar on a terminal; plain lines (one per step) anywhere else."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 30) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self.label = ""

    def step(self, label: str) -> None:
        """Start a step (a table of a hospital)."""
        self.label = label
        if not self.tty:
            print(f"generating {label} ...", file=self.stream, flush=True)
        self._draw()

    def advance(self, units: int) -> None:
        self.done = min(self.total, self.done + units)
        self._draw()

    def _draw(self) -> None:
        if not self.tty:
            return
        fraction = self.done / self.total
        filled = int(fraction * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = time.monotonic() - self.started
        print(f"\r[{bar}] {fraction:4.0%} {elapsed:5.1f} s  {self.label:<32}",
              end="", file=self.stream, flush=True)

    def close(self) -> None:
        elapsed = time.monotonic() - self.started
        if self.tty:
            self.done = self.total
            self.label = "done"
            self._draw()
            print(file=self.stream, flush=True)
        else:
            print(f"generated in {elapsed:.1f} s", file=self.stream, flush=True)


# --------------------------------------------------------------------------- generation

def _marker(data: Path, rows: int) -> Path:
    return data / f".generated-v{GENERATOR_VERSION}-{rows}"


def is_generated(directory: Path, rows: int) -> bool:
    """Whether ``directory/data`` holds this hospital size's data already."""
    return _marker(directory / "data", rows).exists()


def _work(h: Hospital, rows: int) -> int:
    n = sizes(rows)
    return n.patients + _screening_candidates(h, n.screenings) + n.visits


def _chunks(start: int, stop: int) -> Iterable[tuple[int, int]]:
    for first in range(start, stop, CHUNK_ROWS):
        yield first, min(stop, first + CHUNK_ROWS)


def generate(h: Hospital, directory: Path, rows: int, progress: Progress | None = None,
             threads: int | None = None) -> TableSizes:
    """Write ``h``'s patients, screenings and visits under ``directory/data``.

    About ``rows`` rows in all (screenings are drawn by site rate, so their number varies a
    little); returns the number of rows written per table.
    """
    progress = progress or Progress(_work(h, rows), stream=io.StringIO())
    data = directory / "data"
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    n = sizes(rows)
    con = duckdb.connect(config={"threads": threads} if threads else {})
    try:
        _macros(con, h.seed)
        progress.step(f"{h.name}.patients ({n.patients:,})")
        con.execute(f"CREATE TABLE patients AS {_patients_sql(h, 0, 0)}")
        for start, stop in _chunks(0, n.patients):
            con.execute(f"INSERT INTO patients {_patients_sql(h, start, stop)}")
            progress.advance(stop - start)
        candidates = _screening_candidates(h, n.screenings)
        progress.step(f"{h.name}.screenings (~{n.screenings:,})")
        con.execute(f"CREATE TABLE screenings AS {_screenings_sql(h, n.patients, 0, 0)}")
        for start, stop in _chunks(0, candidates):
            con.execute(f"INSERT INTO screenings {_screenings_sql(h, n.patients, start, stop)}")
            progress.advance(stop - start)
        progress.step(f"{h.name}.visits ({n.visits:,})")
        con.execute(f"CREATE TABLE visits AS {_visits_sql(h, n.patients, 0, 0)}")
        for start, stop in _chunks(0, n.visits):
            con.execute(f"INSERT INTO visits {_visits_sql(h, n.patients, start, stop)}")
            progress.advance(stop - start)
        written = []
        for table, order in (("patients", "patient_id"), ("screenings", "screened_on"),
                             ("visits", "visited_on")):
            con.execute(f"COPY (SELECT * FROM {table} ORDER BY {order}) "
                        f"TO {_quote(str(data / (table + '.parquet')))} (FORMAT parquet)")
            row = con.execute(f"SELECT count(*) FROM {table}").fetchone()
            written.append(int(row[0]) if row else 0)
    finally:
        con.close()
    _marker(data, rows).touch()
    return TableSizes(*written)


def generate_all(directory: Path, total_rows: int, stream: TextIO | None = None) -> bool:
    """Generate every hospital's data under ``directory/<hospital>`` unless cached.

    Returns whether anything was generated.
    """
    rows = hospital_rows(total_rows)
    todo = [h for h in HOSPITALS if not is_generated(directory / h.name, rows[h.name])]
    if not todo:
        return False
    progress = Progress(sum(_work(h, rows[h.name]) for h in todo), stream=stream)
    if not progress.tty:
        print(f"generating about {sum(rows[h.name] for h in todo):,} rows of synthetic "
              f"hospital data in {directory} ...", file=progress.stream, flush=True)
    for h in todo:
        generate(h, directory / h.name, rows[h.name], progress)
    progress.close()
    return True

