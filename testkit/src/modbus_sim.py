#!/usr/bin/env python3
"""A Modbus device simulator for Ferry's tests, built on pymodbus's servers.

Usage:
  modbus_sim.py tcp [--servers N] [--profile test|bench]
  modbus_sim.py serial --port PATH [--units 1,2] [--profile test|bench]

TCP servers listen on 127.0.0.1 with ports chosen by the OS; each prints
`listening PORT` on stdout, then `ready` once all are up (serial prints
`ready` once the port is open). Register values are encoded here with Python's
struct module, independently of Ferry's decoder.

Lines on stdin change how a unit answers (`mode UNIT normal|mute|garbage|short`):
  mute     no answer at all (a dead device)
  garbage  bytes that are not a Modbus frame
  short    a well-formed answer one register short
Each command is acknowledged with `ok` on stdout; each TCP connection accepted
prints `connected`. EOF on stdin stops the simulator.
"""

import argparse
import asyncio
import logging
import struct
import sys

from pymodbus.pdu import ModbusPDU  # noqa: F401  (import check: pymodbus present)
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

# How units answer, changed from stdin: unit -> mode.
MODES: dict[int, str] = {}


def words(data: bytes, order: str) -> list[int]:
    """The registers holding the big-endian bytes `data`, written in `order`."""
    regs = [data[i : i + 2] for i in range(0, len(data), 2)]
    if order in ("BADC", "DCBA"):
        regs = [r[::-1] for r in regs]
    if order in ("CDAB", "DCBA"):
        regs.reverse()
    return [int.from_bytes(r, "big") for r in regs]


def test_profile(unit: int) -> SimDevice:
    """The known values the tests expect (see sources/tests/modbus_tcp.rs)."""
    f = struct.pack(">f", 21.5)
    holding = (
        words(f, "ABCD")  # 0..1
        + words(f, "CDAB")  # 2..3
        + words(f, "BADC")  # 4..5
        + words(f, "DCBA")  # 6..7
        + words(struct.pack(">I", 4_000_000_000), "ABCD")  # 8..9   u32
        + words(struct.pack(">h", -1234), "ABCD")  # 10      i16
        + words(struct.pack(">H", 215), "ABCD")  # 11      u16, scale 0.1
        + words(struct.pack(">d", -0.125), "CDAB")  # 12..15  f64
        + words(struct.pack(">q", -5_000_000_000), "DCBA")  # 16..19  i64
        + [unit]  # 20      the unit id, to tell units apart
    )
    text = b"FERRY-01"
    inputs = words(struct.pack(">i", -70000), "ABCD") + words(text, "ABCD")  # 0..1, 2..5
    return SimDevice(
        id=unit,
        simdata=(
            [SimData(0, values=[True, False, True], datatype=DataType.BITS)],
            [SimData(0, values=[False, True], datatype=DataType.BITS)],
            [SimData(0, values=holding, datatype=DataType.REGISTERS)],
            [SimData(0, values=inputs, datatype=DataType.REGISTERS)],
        ),
    )


def bench_profile(unit: int) -> SimDevice:
    """50 holding registers, 0..49: 25 f32 values."""
    regs = []
    for i in range(25):
        regs += words(struct.pack(">f", 20.0 + i / 4), "ABCD")
    return SimDevice(
        id=unit,
        simdata=(
            [SimData(0, values=[False], datatype=DataType.BITS)],
            [SimData(0, values=[False], datatype=DataType.BITS)],
            [SimData(0, values=regs, datatype=DataType.REGISTERS)],
            [SimData(0, values=[0], datatype=DataType.REGISTERS)],
        ),
    )


def crc16(data: bytes) -> bytes:
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return struct.pack("<H", crc)


def tracer(serial: bool):
    """A pymodbus trace_packet hook that rewrites answers per MODES."""

    def trace(sending: bool, data: bytes) -> bytes:
        if not sending or not data:
            return data
        unit = data[0] if serial else (data[6] if len(data) > 6 else 0)
        mode = MODES.get(unit, "normal")
        if mode == "mute":
            return b""
        if mode == "garbage":
            return bytes((0xA5 ^ i) & 0xFF for i in range(len(data)))
        if mode == "short":
            head = 1 if serial else 7
            pdu = data[head : len(data) - 2] if serial else data[head:]
            if pdu and pdu[0] in (3, 4) and pdu[1] >= 4:
                pdu = bytes([pdu[0], pdu[1] - 2]) + pdu[2:-2]
                if serial:
                    frame = data[:1] + pdu
                    return frame + crc16(frame)
                mbap = data[:4] + struct.pack(">H", len(pdu) + 1) + data[6:7]
                return mbap + pdu
        return data

    return trace


def on_connect(connected: bool) -> None:
    """pymodbus's trace_connect hook: each new TCP connection prints `connected`."""
    if connected:
        print("connected", flush=True)


async def control() -> None:
    """Reads mode commands from stdin until EOF."""
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        parts = line.split()
        if len(parts) == 3 and parts[0] == "mode":
            MODES[int(parts[1])] = parts[2]
            print("ok", flush=True)
        elif parts:
            print(f"error unknown command {line.strip()!r}", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["tcp", "serial"])
    parser.add_argument("--servers", type=int, default=1)
    parser.add_argument("--port", default="")
    parser.add_argument("--units", default="1")
    parser.add_argument("--profile", choices=["test", "bench"], default="test")
    args = parser.parse_args()
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    profile = test_profile if args.profile == "test" else bench_profile
    units = [int(u) for u in args.units.split(",")]
    servers = []
    if args.kind == "tcp":
        for _ in range(args.servers):
            server = ModbusTcpServer(
                [profile(u) for u in units],
                address=("127.0.0.1", 0),
                trace_packet=tracer(serial=False),
                trace_connect=on_connect,
            )
            await server.serve_forever(background=True)
            port = server.transport.sockets[0].getsockname()[1]
            print(f"listening {port}", flush=True)
            servers.append(server)
    else:
        server = ModbusSerialServer(
            [profile(u) for u in units],
            port=args.port,
            baudrate=115200,
            trace_packet=tracer(serial=True),
        )
        await server.serve_forever(background=True)
        servers.append(server)
    print("ready", flush=True)
    await control()
    for server in servers:
        await server.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
