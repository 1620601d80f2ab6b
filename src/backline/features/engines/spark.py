"""The Spark engine: the same compiled plan as DuckDB, run by a local (or configured) Spark.

    [features]
    engine = "spark"          # needs the `spark` extra (pyspark) and Java 17 or later
    spark_master = "local[2]"

One SparkSession serves the whole process (starting Spark takes seconds); an engine owns only
its temporary views and a scratch folder under `.backline/tmp`, both gone after `close()`.
Entity rows and query results pass through Parquet files in that folder, so neither pandas
nor a driver-side copy of the result is needed, and results stream back batch by batch with
the types DuckDB gives (int64, float64, string, timestamp[us, tz=UTC]).

The scratch folder must be reachable by every executor: with a master other than local[...],
put the project on a shared file system.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from backline.core.config import Config, SourceSpec
from backline.core.errors import ConfigError, InvalidArgument, SchemaError
from backline.features.compile import ROW, SPARK, TIME

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

_LOCK = threading.Lock()
_SESSION: SparkSession | None = None
_MID = "__mid"  # monotonically_increasing_id of a CSV row: partition << 33 | position
_LOW_BITS = (1 << 33) - 1
_LOG4J = """\
rootLogger.level = error
# at ERROR too, so that Spark does not announce a "default log level" of WARN at start
logger.gateway.name = org.apache.spark.api.python.PythonGatewayServer
logger.gateway.level = error
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n
"""
# Set on every engine's session: UTC times, few shuffle partitions for one machine, µs timestamps
# in written Parquet, and partition values read as written (event_date is typed by hand).
_SQL_SETTINGS = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.shuffle.partitions": "4",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
}
# Spark's names for column types, as DuckDB spells them, so errors read the same on both engines.
_DUCKDB_NAMES = {
    "timestamp_ntz": "TIMESTAMP",
    "timestamp": "TIMESTAMP WITH TIME ZONE",
    "string": "VARCHAR",
    "bigint": "BIGINT",
    "int": "INTEGER",
    "smallint": "SMALLINT",
    "tinyint": "TINYINT",
    "double": "DOUBLE",
    "float": "FLOAT",
    "boolean": "BOOLEAN",
    "date": "DATE",
    "binary": "BLOB",
}


class SparkEngine:
    dialect = SPARK

    def __init__(self, cfg: Config) -> None:
        # a session of its own (sharing the process's SparkContext): its settings and temporary
        # views cannot meet those of another engine or of the application's own session
        self.spark = _shared_session(cfg).newSession()
        for key, value in _SQL_SETTINGS.items():
            self.spark.conf.set(key, value)
        scratch_root = cfg.root / ".backline" / "tmp"
        scratch_root.mkdir(parents=True, exist_ok=True)
        self._scratch = Path(tempfile.mkdtemp(prefix="spark-", dir=scratch_root))
        self._views: list[str] = []
        self._sources: dict[tuple[str, ...], str] = {}
        self._n = 0
        self.columns: list[str] = []

    # -- relations ----------------------------------------------------------------------------

    def entities(self, rows: pa.Table | Path, timestamp_column: str) -> tuple[str, int, int, int]:
        if isinstance(rows, pa.Table):
            df = self._arrow_entities(rows.to_batches(), rows.schema)
        else:
            suffix = Path(rows).suffix.lower()
            if suffix == ".parquet":
                source = pq.ParquetFile(rows)
                _require_time_column(source.schema_arrow.names, timestamp_column)
                df = self._arrow_entities(source.iter_batches(), source.schema_arrow)
            elif suffix == ".csv":
                df = self._csv_entities(Path(rows), timestamp_column)
            else:
                raise InvalidArgument(
                    f"entities file {rows} must be .parquet or .csv (with join keys and a "
                    "timestamp column)."
                )
        types = {f.name: f.dataType.simpleString() for f in df.schema.fields if f.name != _MID}
        _require_time_column(list(types), timestamp_column)
        if types[timestamp_column] != "timestamp":
            kind = types[timestamp_column]
            raise SchemaError(
                f"entity column {timestamp_column!r} is {_DUCKDB_NAMES.get(kind, kind.upper())}, "
                "not a timestamp with a timezone. Write times with an offset "
                "(2026-01-05T10:00:00Z) or as UTC-aware timestamps; backline never guesses a zone."
            )
        if _MID in df.columns:
            df = self._number_csv_rows(df)
        name = self._view(df, "__entity_input")
        ts = SPARK.quote(timestamp_column)
        view = "__entities"
        self.spark.sql(
            f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT *, unix_micros({ts}) AS {TIME} FROM {name}"
        )
        self._views.append(view)
        row = self.spark.sql(
            f"SELECT count(*), min({TIME}), max({TIME}), count(*) - count({TIME}) FROM {view}"
        ).collect()[0]
        if row[3]:
            raise SchemaError(
                f"{row[3]} entity rows have no {timestamp_column!r}; every row needs a time."
            )
        self.columns = [c for c in types if c != ROW]
        return view, int(row[0]), int(row[1] or 0), int(row[2] or 0)

    def _arrow_entities(self, batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> DataFrame:
        """Copy the rows to Parquet with `__row` (their position) and µs timestamps; read that."""
        base = _spark_schema(schema)
        target = base.append(pa.field(ROW, pa.int64()))
        path = self._scratch / "entities.parquet"
        start = 0
        with pq.ParquetWriter(path, target, coerce_timestamps="us") as writer:
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                number = pa.array(np.arange(start, start + batch.num_rows, dtype=np.int64))
                columns = [
                    c if c.type == f.type else c.cast(f.type, safe=False)
                    for c, f in zip(batch.columns, base, strict=True)
                ]
                writer.write_batch(pa.RecordBatch.from_arrays([*columns, number], schema=target))
                start += batch.num_rows
        return self.spark.read.parquet(str(path))

    def _csv_entities(self, path: Path, timestamp_column: str) -> DataFrame:
        """Read a CSV with inferred types; times without an offset come back TIMESTAMP_NTZ."""
        from pyspark.sql import functions as F

        reader = self.spark.read.options(header=True, inferSchema=True, mode="FAILFAST")
        # inference makes offset-less times TIMESTAMP_NTZ only under this setting (this
        # engine's own session; nothing else runs in it meanwhile)
        self.spark.conf.set("spark.sql.timestampType", "TIMESTAMP_NTZ")
        try:
            df = reader.csv(str(path))
        finally:
            self.spark.conf.unset("spark.sql.timestampType")
        # DuckDB reads whole numbers in a CSV as BIGINT; Spark would make small ones INT
        for field in df.schema.fields:
            if field.dataType.simpleString() in ("int", "smallint", "tinyint"):
                df = df.withColumn(field.name, F.col(field.name).cast("bigint"))
        return df.withColumn(_MID, F.monotonically_increasing_id())

    def _number_csv_rows(self, df: DataFrame) -> DataFrame:
        """Give CSV rows `__row` in file order: partition offsets plus the position within one."""
        from pyspark.sql import functions as F

        raw = self._scratch / "entities-csv"
        df.write.parquet(str(raw))
        df = self.spark.read.parquet(str(raw))
        part = F.shiftright(F.col(_MID), 33)
        counts = sorted(
            (int(r[0]), int(r[1])) for r in df.groupBy(part.alias("p")).count().collect()
        )
        offset = F.lit(0).cast("bigint")
        start = 0
        cases = None
        for p, n in counts:
            cases = F.when(part == p, start) if cases is None else cases.when(part == p, start)
            start += n
        if cases is not None:
            offset = cases.otherwise(0).cast("bigint")
        numbered = offset + F.col(_MID).bitwiseAND(_LOW_BITS)
        return df.withColumn(ROW, numbered.cast("bigint")).drop(_MID)

    def source(
        self, spec: SourceSpec, files: list[Path], bounds: tuple[int | None, int | None]
    ) -> str:
        low, high = bounds
        first = dt.date.min if low is None else _utc_date(low) - dt.timedelta(days=1)
        last = dt.date.max if high is None else _utc_date(high) + dt.timedelta(days=1)
        # prune whole partitions first; the exact bound is applied by the compiled query
        kept = [f for f in files if _in_dates(f, first, last)]
        known = (spec.name, *(str(f) for f in kept))
        if known in self._sources:  # views over the same files share one relation
            return self._sources[known]
        self._n += 1
        name = f"__source_{self._n}"
        self._sources[known] = name
        if not kept:
            cols = ", ".join(
                f"CAST(NULL AS {SPARK.sql_type(c.type)}) AS {SPARK.quote(c.name)}"
                for c in spec.columns
            )
            self.spark.sql(
                f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT {cols}, "
                "CAST(NULL AS TIMESTAMP) AS ingested_at WHERE false"
            )
            self._views.append(name)
            return name
        from pyspark.sql import functions as F

        df = (
            self.spark.read.option("basePath", str(_base_path(kept[0])))
            .option("mergeSchema", "true")
            .parquet(*(str(f) for f in kept))
        )
        # partition values are read as strings (type inference is off): type them as DuckDB does
        if "event_date" in df.columns:
            df = df.withColumn("event_date", F.col("event_date").cast("date"))
        return self._view(df, name)

    def _view(self, df: DataFrame, name: str) -> str:
        df.createOrReplaceTempView(name)
        self._views.append(name)
        return name

    # -- queries ------------------------------------------------------------------------------

    def execute(self, sql: str, batch_rows: int = 256 * 1024) -> Iterator[pa.RecordBatch]:
        self._n += 1
        out = self._scratch / f"result-{self._n}"
        df = self.spark.sql(sql)
        names = df.columns
        # written under positional names, so that no column name can trouble Parquet or Spark
        df.toDF(*(f"c{i}" for i in range(len(names)))).write.parquet(str(out))
        try:
            # part files are numbered in partition order, so an ORDER BY survives the write
            for part in sorted(out.glob("part-*.parquet")):
                reader = pq.ParquetFile(part)
                schema = pa.schema(
                    pa.field(name, f.type)
                    for name, f in zip(names, reader.schema_arrow, strict=True)
                )
                for batch in reader.iter_batches(batch_size=batch_rows):
                    yield pa.RecordBatch.from_arrays(batch.columns, schema=schema)
        finally:
            shutil.rmtree(out, ignore_errors=True)

    def close(self) -> None:
        for name in self._views:
            with contextlib.suppress(Exception):
                self.spark.catalog.dropTempView(name)
        self._views.clear()
        shutil.rmtree(self._scratch, ignore_errors=True)


# -- the shared session --------------------------------------------------------------------------


def _shared_session(cfg: Config) -> SparkSession:
    """The process's SparkSession, started on first use (and again if the master changes)."""
    global _SESSION
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ConfigError(
            'features.engine = "spark" needs pyspark. Install it with '
            "pip install 'backline[spark]', or set features.engine = \"duckdb\"."
        ) from None
    master = cfg.features.spark_master
    with _LOCK:
        if _SESSION is not None:
            context = _SESSION.sparkContext
            if getattr(context, "_jsc", None) is not None and context.master == master:
                return _SESSION
            _SESSION.stop()
            _SESSION = None
        _require_java()
        builder = (
            SparkSession.builder.master(master)
            .appName("backline")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.driver.memory", _spark_size(cfg.features.memory_limit))
            .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile=file:{_log4j()}")
        )
        for key, value in _SQL_SETTINGS.items():
            builder = builder.config(key, value)
        if master.startswith("local"):
            builder = builder.config("spark.driver.host", "127.0.0.1").config(
                "spark.driver.bindAddress", "127.0.0.1"
            )
        try:
            session = builder.getOrCreate()
        except Exception as err:
            raise ConfigError(
                f"Spark did not start (features.spark_master = {master!r}): {err}. Spark needs "
                "Java 17 or later on PATH or in JAVA_HOME."
            ) from err
        session.sparkContext.setLogLevel("ERROR")
        _SESSION = session
        return session


def _log4j() -> Path:
    """A log4j2 configuration that keeps Spark to errors (the JVM reads it once, at start)."""
    handle, name = tempfile.mkstemp(prefix="backline-spark-log4j2-", suffix=".properties")
    with os.fdopen(handle, "w") as out:
        out.write(_LOG4J)
    atexit.register(_remove, Path(name))
    return Path(name)


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def _require_java() -> None:
    home = os.environ.get("JAVA_HOME")
    if home:  # pyspark starts $JAVA_HOME/bin/java when JAVA_HOME is set
        if (Path(home) / "bin" / "java").exists():
            return
        raise ConfigError(
            f'features.engine = "spark" needs Java 17 or later, and JAVA_HOME={home} has no '
            "bin/java. Point JAVA_HOME at a Java 17+ installation, or unset it to use `java` "
            "from PATH."
        )
    if shutil.which("java"):
        return
    raise ConfigError(
        'features.engine = "spark" needs Java 17 or later, and no `java` is on PATH or in '
        "JAVA_HOME. Install one (e.g. apt-get install openjdk-17-jre-headless) or set "
        'features.engine = "duckdb".'
    )


def _spark_size(size: str) -> str:
    """features.memory_limit ('3GB', '512MiB') as a Spark size in MiB ('2861m'), 512m at least."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT])(i?)B", size.strip())
    if match is None:  # config validation makes this unreachable
        return "1g"
    value, unit, binary = float(match[1]), match[2], match[3]
    power = "KMGT".index(unit) + 1
    byte_count = value * (1024 if binary else 1000) ** power
    return f"{max(int(byte_count // 2**20), 512)}m"


# -- helpers -------------------------------------------------------------------------------------


def _require_time_column(names: list[str], timestamp_column: str) -> None:
    if timestamp_column not in names:
        raise SchemaError(
            f"entities have no timestamp column {timestamp_column!r} (columns: "
            f"{', '.join(c for c in names if c != ROW)}). Pass --timestamp-column NAME."
        )


def _spark_schema(schema: pa.Schema) -> pa.Schema:
    """The schema to write entity rows with: nanosecond times as µs, which Spark can read."""
    fields = []
    for f in schema:
        if pa.types.is_timestamp(f.type) and f.type.unit == "ns":
            f = f.with_type(pa.timestamp("us", tz=f.type.tz))
        fields.append(f)
    return pa.schema(fields)


def _utc_date(micros: int) -> dt.date:
    return (dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=micros)).date()


def _in_dates(path: Path, first: dt.date, last: dt.date) -> bool:
    for part in path.parts:
        if part.startswith("event_date="):
            try:
                day = dt.date.fromisoformat(part.split("=", 1)[1])
            except ValueError:
                return True
            return first <= day <= last
    return True


def _base_path(path: Path) -> Path:
    """The folder above the Hive partition folders (source=…/event_date=…) of a file."""
    base = path.parent
    while "=" in base.name:
        base = base.parent
    return base
