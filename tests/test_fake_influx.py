"""The scripted fake InfluxDB does what its docstring says: other tests rely on it."""

from __future__ import annotations

import threading

import httpx
import pytest

from tests.fake_influx import FakeInflux
from tests.support import wait_until

LINE = 'operation,name=sum,pod=p,port=1 id="a\\"b",numbers=1.0,result=1.0 1'


def test_behaviours_answer_and_record_as_documented() -> None:
    """1. Up: 204, line stored and its id read back. 2. A status with a partial store.
    3. A script of answers goes first, then the behaviour. 4. /ping answers 204."""
    with FakeInflux() as influx, httpx.Client(base_url=influx.url, timeout=5) as client:
        assert client.post("/write?db=calc", content=LINE).status_code == 204
        assert influx.stored_ids() == ['a"b']
        influx.status(400, '{"error":"partial write: dropped=1"}', store=1)
        answer = client.post("/write?db=calc", content="x 1\ny 2")
        assert (answer.status_code, answer.json()["error"]) == (400, "partial write: dropped=1")
        assert influx.stored[-1] == "x 1"
        influx.script([(413, ""), (503, "")])
        assert [client.post("/write", content="z 3").status_code for _ in range(3)] == [
            413,
            503,
            400,
        ]
        assert client.get("/ping").status_code == 204
        assert influx.writes == 5
        assert influx.received == [LINE, "x 1", "y 2", "z 3", "z 3", "z 3"]


def test_refuse_stops_listening_and_up_listens_again_on_the_same_port() -> None:
    """1. refuse: new connections are refused, and a kept-alive one is cut. 2. up: the
    same URL answers again."""
    with FakeInflux() as influx, httpx.Client(base_url=influx.url, timeout=5) as client:
        assert client.post("/write", content="a 1").status_code == 204  # keeps the connection
        influx.refuse()
        with pytest.raises(httpx.TransportError):
            client.post("/write", content="b 2")
        with pytest.raises(httpx.ConnectError):
            httpx.post(f"{influx.url}/write", content="c 3", timeout=5)
        influx.up()
        assert httpx.post(f"{influx.url}/write", content="d 4", timeout=5).status_code == 204
        assert influx.stored == ["a 1", "d 4"]


def test_a_stall_holds_the_answer_until_the_behaviour_changes() -> None:
    """1. stall: a write is read (recorded) but not answered. 2. up: the stalled write
    is answered 204 and stored."""
    with FakeInflux() as influx:
        influx.stall()
        answers: list[int] = []

        def write() -> None:
            answers.append(httpx.post(f"{influx.url}/write", content="s 1", timeout=10).status_code)

        writer = threading.Thread(target=write)
        writer.start()
        wait_until(lambda: influx.received == ["s 1"], 5, what="the stalled write to arrive")
        assert answers == [] and influx.stored == []
        influx.up()
        writer.join(10)
        assert answers == [204]
        assert influx.stored == ["s 1"]
