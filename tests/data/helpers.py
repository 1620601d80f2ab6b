"""Small builders of raw input files for the ingestion tests."""

from __future__ import annotations

from pathlib import Path

HEADER = "transaction_id,card_id,merchant_id,merchant_category,amount,currency,country,channel,device_id,event_time"


def tx_id(n: int) -> str:
    return f"tx_{n:016x}"


def row(
    n: int,
    *,
    amount: str = "12.50",
    currency: str = "USD",
    card: str = "card_0000001",
    event_time: str = "2026-01-02T10:00:00Z",
    channel: str = "pos",
) -> str:
    return f"{tx_id(n)},{card},m_000001,grocery,{amount},{currency},US,{channel},dev_00000001,{event_time}"


def write_csv(path: Path, rows: list[str], header: str = HEADER, newline: str = "\n") -> Path:
    path.write_text(newline.join([header, *rows]) + newline)
    return path
