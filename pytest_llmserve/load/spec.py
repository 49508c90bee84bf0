"""What a load run asks for (`LoadSpec`) and how the client runs it (`ClientOptions`, `CheckLimits`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from .sessions import Sessions

ENDPOINTS = ("completions", "chat")
ARRIVALS = ("poisson", "constant", "trace")  # "trace": the send offsets in `arrival_times`


@dataclass(frozen=True)
class LoadSpec:
    """One load shape: closed loop (`concurrency`) or open loop (`rate`), by count or by duration."""

    endpoint: str = "completions"  # "completions" | "chat"
    concurrency: int | None = 1  # closed loop when rate is None; with a rate, a cap on requests in flight
    rate: float | None = None  # requests/s, open loop
    arrival: str = "poisson"  # "poisson" | "constant"
    requests: int | None = 32  # measured requests (None: run for duration_s)
    duration_s: float | None = None
    warmup: int = 2  # requests sent first and excluded from statistics
    input_len: int = 64
    output_len: int = 64
    prompts: tuple | None = None  # explicit prompts (str or tuple[int, ...]), cycled
    ignore_eos: bool = True  # matched work: ignore_eos + min_tokens = max_tokens, then verified
    request_timeout_s: float = 120.0  # whole request, and also the longest silence between chunks
    seed: int = 0
    extra_body: Mapping[str, Any] | None = None  # merged into every request body
    vocab_size: int | None = None  # hint for synthetic token ids (drawn from 10..min(1000, vocab_size-1))
    # per-request output lengths, cycled like `prompts` (workload profiles, traces); None: output_len for all
    output_lens: tuple[int, ...] | None = None
    # arrival="trace": send offsets in seconds from the start of the measured window, one per measured request
    arrival_times: tuple[float, ...] | None = None
    # False: non-streaming requests (offline batch); TTFT = E2E = arrival of the whole response, no ITL/TPOT
    stream: bool = True
    # multi-turn: which prompt continues which; a later turn sends the previous one's prompt + the server's real
    # reply + its new message, once the previous turn has finished (sessions.py)
    sessions: Sessions | None = None

    @property
    def open_loop(self) -> bool:
        return self.rate is not None

    def validate(self) -> None:
        """Raise ValueError naming the field and what to pass instead."""
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint={self.endpoint!r}: use one of {', '.join(ENDPOINTS)}")
        if self.arrival not in ARRIVALS:
            raise ValueError(f"arrival={self.arrival!r}: use one of {', '.join(ARRIVALS)}")
        if self.rate is None and self.concurrency is None:
            raise ValueError("set concurrency=N (closed loop) or rate=R requests/s (open loop)")
        if self.concurrency is not None and (not _is_int(self.concurrency) or self.concurrency < 1):
            raise ValueError(f"concurrency={self.concurrency!r} must be an integer >= 1 (or None with a rate)")
        if self.rate is not None and (not _is_num(self.rate) or not math.isfinite(self.rate) or self.rate <= 0):
            raise ValueError(f"rate={self.rate!r} must be a finite number of requests/s > 0 (or None for closed loop)")
        if (self.requests is None) == (self.duration_s is None):
            raise ValueError(
                f"requests={self.requests!r}, duration_s={self.duration_s!r}: set exactly one of them "
                "(e.g. requests=64, or requests=None with duration_s=30)"
            )
        if self.requests is not None and (not _is_int(self.requests) or self.requests < 1):
            raise ValueError(f"requests={self.requests!r} must be an integer >= 1")
        if self.duration_s is not None and (not _is_num(self.duration_s) or self.duration_s <= 0):
            raise ValueError(f"duration_s={self.duration_s!r} must be a number of seconds > 0")
        if not _is_int(self.warmup) or self.warmup < 0:
            raise ValueError(f"warmup={self.warmup!r} must be an integer >= 0")
        for name in ("input_len", "output_len"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1 (tokens)")
        if not _is_num(self.request_timeout_s) or self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s={self.request_timeout_s!r} must be seconds > 0")
        if self.vocab_size is not None and (not _is_int(self.vocab_size) or self.vocab_size < 12):
            raise ValueError(f"vocab_size={self.vocab_size!r} must be an integer >= 12 (the model's vocabulary size)")
        if self.extra_body is not None and not isinstance(self.extra_body, Mapping):
            raise ValueError(f"extra_body must be a mapping of JSON fields, got {type(self.extra_body).__name__}")
        self._validate_sequences()
        if self.sessions is not None:
            self._validate_sessions(self.sessions)
        if not isinstance(self.stream, bool):
            raise ValueError(f"stream={self.stream!r} must be True (SSE streaming) or False (one JSON response)")
        if self.prompts is not None:
            if not isinstance(self.prompts, tuple) or not self.prompts:
                raise ValueError("prompts must be a non-empty tuple of strings or tuples of token ids")
            for i, p in enumerate(self.prompts):
                if isinstance(p, str):
                    continue
                if isinstance(p, tuple) and p and all(_is_int(t) and t >= 0 for t in p):
                    if self.endpoint == "chat":
                        raise ValueError(f"prompts[{i}] is a list of token ids; the chat endpoint needs text prompts")
                    continue
                raise ValueError(f"prompts[{i}]={p!r:.60} must be a string or a non-empty tuple of token ids")

    def output_len_for(self, index: int) -> int:
        """Tokens request `index` asks for: its entry of `output_lens` (cycled), else `output_len`."""
        if self.output_lens is None:
            return self.output_len
        return self.output_lens[index % len(self.output_lens)]

    def _validate_sessions(self, sessions: Sessions) -> None:
        if self.rate is not None or self.requests is None:
            raise ValueError("multi-turn sessions run closed loop for a number of requests: set concurrency and "
                             "requests=N (no rate, no duration_s)")
        if self.endpoint != "completions":
            raise ValueError(f"multi-turn sessions run on the completions endpoint, not {self.endpoint!r}")
        sessions.validate(self.prompts)

    def _validate_sequences(self) -> None:
        if self.output_lens is not None:
            if not isinstance(self.output_lens, tuple) or not self.output_lens or \
                    not all(_is_int(n) and n >= 1 for n in self.output_lens):
                raise ValueError("output_lens must be a non-empty tuple of integers >= 1 (tokens per request)")
            if len(self.output_lens) > _MAX_LENGTHS:
                raise ValueError(f"output_lens has {len(self.output_lens)} entries; at most {_MAX_LENGTHS} (they cycle)")
            if self.prompts is not None and len(self.prompts) != len(self.output_lens):
                raise ValueError(f"output_lens has {len(self.output_lens)} entries but prompts has "
                                 f"{len(self.prompts)}: give one output length per prompt")
        if (self.arrival == "trace") != (self.arrival_times is not None):
            raise ValueError("arrival='trace' and arrival_times=(seconds, ...) go together: give both or neither")
        if self.arrival_times is not None:
            times = self.arrival_times
            if not isinstance(times, tuple) or not times or \
                    not all(_is_num(t) and math.isfinite(t) and t >= 0 for t in times):
                raise ValueError("arrival_times must be a non-empty tuple of finite send offsets in seconds >= 0")
            if any(b < a for a, b in zip(times, times[1:])):
                raise ValueError("arrival_times must be sorted (send offsets from the start, non-decreasing)")
            if self.rate is None:
                raise ValueError("arrival='trace' is open loop: set rate (the trace's mean rate, informational)")
            if self.requests != len(times):
                raise ValueError(f"requests={self.requests!r} but arrival_times has {len(times)} entries: "
                                 "one measured request per arrival")


# per-request lengths cycle with the prompts; BodyPool keeps at most this many distinct bodies
_MAX_LENGTHS = 4096


@dataclass(frozen=True)
class CheckLimits:
    """Thresholds of the client self-check; beyond them the run is marked invalid."""

    # open loop: p99 of (actual send - scheduled send); beyond it the arrival process was not the one asked for
    max_send_lag_p99_ms: float = 10.0
    # share of token chunks read in the same read() as the next token chunk of the same request (or of
    # requests whose first token was): such a chunk carries the later chunk's arrival time ...
    max_merged_token_frac: float = 0.01
    # ... which is at most as late as the client was: while the event loop was never later than this, a
    # merged chunk's time is within it (the server sent the chunks together); beyond it, the run is invalid
    merged_lag_tolerance_ms: float = 5.0
    # event-loop delay p99 beyond which the client could not keep up, whatever it measured (kernel receive
    # timestamps keep measurements exact while the loop is merely slow, so this limit is generous)
    max_loop_lag_p99_ms: float = 50.0


@dataclass(frozen=True)
class ClientOptions:
    """How the client runs (not what load it offers); the defaults are the measured-best settings."""

    kernel_timestamps: bool = True  # SO_TIMESTAMPNS arrival times; False: time.time_ns() after each read
    uvloop: bool = True  # only for the sync run_load (run_load_async uses the caller's loop)
    gc_freeze: bool = True  # gc.freeze() + gc.disable() during the measured window
    http_parser: str = "auto"  # "auto" (httptools if installed, else h11) | "httptools" | "h11"
    read_buffer: int = 1 << 20  # bytes per recvmsg_into
    probe_interval_s: float = 0.005  # event-loop lag probe period
    connect_timeout_s: float = 10.0
    # closed loop: after this long with every reconnect failing (a dead server), the requests not yet sent
    # are failed at once instead of one per retry (20 000 requests would take 1 000 s)
    give_up_unreachable_s: float = 3.0
    workers: int = 1  # client processes (sync run_load only); each runs its share of the load
    headers: tuple[tuple[str, str], ...] = ()  # extra request headers, e.g. (("authorization", "Bearer x"),)
    warm_path: str = "/v1/models"  # one GET on each new connection before the window (a route that answers cheaply)
    limits: CheckLimits = field(default_factory=CheckLimits)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
