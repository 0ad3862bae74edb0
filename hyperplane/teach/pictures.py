"""Pictures drawn from the reference model itself, so they cannot drift from it.

Each picture has a text form made from the model's own code: the TCP and UDP state machines are
every transition tcp_transition() / udp_transition() make (enumerated over every state, event,
direction and flag that matters), the sequence diagram is a real session through the model, the
pool picture a real fill of an ENI's pool until a new ENI is taken. The text forms live in
docs/pictures/ beside the images, and each image carries the hash of its text form: a test
regenerates the text forms and fails when one changed and `make pictures` was not run.

    python3 -m hyperplane.teach.pictures [--check]      (make pictures)
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

from ..model import Nat
from ..model.conntrack import ORIG, REPLY, tcp_transition, udp_transition
from ..model.tcp import reopens
from ..model.packet import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN
from ..vocab import (F_CLOSER_REPLY, F_FIN_SEEN, F_REPLY_SEEN, F_SYN_REPLY, IN, OUT, PROFILES, S,
                     STATES, UDP_STREAM_MS)

OUT_DIR = Path(__file__).resolve().parents[2] / "docs" / "pictures"
TCP_STATES = [s for s in STATES if s not in ("NONE", "UDP_FIRST", "UDP_STREAM")]
EVENTS = {"SYN": TCP_SYN, "SYNACK": TCP_SYN | TCP_ACK, "ACK": TCP_ACK, "FIN": TCP_FIN | TCP_ACK,
          "RST": TCP_RST}
EVENT_TEXT = {"SYN": "SYN", "SYNACK": "SYN-ACK", "ACK": "ACK", "FIN": "FIN", "RST": "RST"}
CLOSING = ("FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT")
HASH_MARK = "source-sha256:"


def timeouts(state: str) -> str:
    return f"aws {PROFILES['aws'][state]} s, rfc {PROFILES['rfc'][state]} s"


def who(state: str, d: int, flags: int) -> str:
    """The sender, as the picture names it: in the closing states the side that closed first
    (the closer) or the other one (its peer); elsewhere inside or customer."""
    if state in CLOSING:
        closer = REPLY if flags & F_CLOSER_REPLY else ORIG
        return "closer" if d == closer else "peer"
    return "inside" if d == ORIG else "customer"


def tcp_edges() -> dict[tuple[str, str], list[str]]:
    """(from, to) -> labels: every state change tcp_transition makes, and the SYN that opens a
    connection or reopens a closed one."""
    edges: dict[tuple[str, str], list[str]] = {("NONE", "SYN_SENT"): ["SYN from inside (new)"]}
    for state in TCP_STATES:
        # The flags a connection in this state can have that change what a segment does:
        # who closed first (closing states), a SYN seen from the customer (SYN_SENT).
        variants = ([F_FIN_SEEN, F_FIN_SEEN | F_CLOSER_REPLY] if state in CLOSING
                    else [0, F_SYN_REPLY] if state == "SYN_SENT" else [0])
        for event, bits in EVENTS.items():
            for d in (ORIG, REPLY):
                for flags in variants:
                    if reopens(S[state], d, bits, ORIG):
                        new = "SYN_SENT"
                        label = f"{EVENT_TEXT[event]} from inside (reopens)"
                    else:
                        to, new_flags = tcp_transition(S[state], flags, event, d)
                        new = STATES[to]
                        if new == state:
                            continue
                        label = f"{EVENT_TEXT[event]} from {who(state, d, flags)}"
                        if flags & F_SYN_REPLY:
                            label += " (simultaneous open)"
                    labels = edges.setdefault((state, new), [])
                    if label not in labels:
                        labels.append(label)
    # A simultaneous-open edge equal to the plain one says nothing more.
    for labels in edges.values():
        labels[:] = [l for l in labels
                     if not (l.endswith(" (simultaneous open)")
                             and l.removesuffix(" (simultaneous open)") in labels)]
    return edges


def tcp_dot() -> str:
    lines = ["digraph tcp {", "  rankdir=TB; node [shape=box, style=rounded, fontname=Helvetica];",
             "  edge [fontname=Helvetica, fontsize=10];",
             '  NONE [label="no connection", shape=plaintext];']
    for state in TCP_STATES:
        lines.append(f'  {state} [label="{state}\\n{timeouts(state)}"];')
    for (a, b), labels in sorted(tcp_edges().items(), key=lambda kv: (STATES.index(kv[0][0]),
                                                                      STATES.index(kv[0][1]))):
        lines.append(f'  {a} -> {b} [label="' + "\\n".join(labels) + '"];')
    lines.append('  label="TCP states of hyperplane/model/conntrack.py tcp_transition(): '
                 'segments that change the state; any other keeps it. Idle timeouts: '
                 'profiles aws and rfc (vocab.PROFILES)"; labelloc=b; fontsize=11;')
    lines.append("}")
    return "\n".join(lines) + "\n"


def udp_dot() -> str:
    """udp_transition() run on its cases: a lone exchange stays UDP_FIRST, a packet
    UDP_STREAM_MS after the first reply makes a stream."""
    cases = []
    first, stream = S["UDP_FIRST"], S["UDP_STREAM"]
    for d, flags, gap, text in ((OUT, 0, 0, "first datagram out"),
                                (IN, 0, 0, "first reply"),
                                (OUT, F_REPLY_SEEN, UDP_STREAM_MS - 1, "a packet < 2 s after the first reply"),
                                (IN, F_REPLY_SEEN, UDP_STREAM_MS, "a packet >= 2 s after the first reply")):
        new, _, _ = udp_transition(first, flags, d, 0, gap)
        cases.append((STATES[first], STATES[new], text))
    new, _, _ = udp_transition(stream, F_REPLY_SEEN, OUT, 0, 10 * UDP_STREAM_MS)
    cases.append((STATES[stream], STATES[new], "any packet"))
    lines = ["digraph udp {", "  rankdir=LR; node [shape=box, style=rounded, fontname=Helvetica];",
             "  edge [fontname=Helvetica, fontsize=10];",
             '  NONE [label="no connection", shape=plaintext];',
             '  NONE -> UDP_FIRST [label="datagram from inside (new)"];']
    for state in ("UDP_FIRST", "UDP_STREAM"):
        lines.append(f'  {state} [label="{state}\\n{timeouts(state)}"];')
    for a, b, text in cases:
        lines.append(f'  {a} -> {b} [label="{text}"];')
    lines.append('  label="UDP of hyperplane/model/conntrack.py udp_transition(); '
                 'every packet restarts the state\'s idle timer"; labelloc=b; fontsize=11;')
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- a session and a pool fill, run through the model ------------------------------------------

def _demo_lab():
    from ..config import default_config
    from ..lab.topology import build_topology
    return build_topology(default_config()).state()


SESSION = [  # (direction, flags, seq, ack, payload): api opens a connection to web:8080
    (OUT, "S", 1000, 0, b""), (IN, "SA", 700000, 1001, b""), (OUT, "A", 1001, 700001, b""),
    (OUT, "PA", 1001, 700001, b"GET / HTTP/1.0\r\n\r\n"),
    (IN, "PA", 700001, 1019, b"HTTP/1.0 200 OK\r\n\r\n"), (OUT, "A", 1019, 700020, b""),
    (OUT, "FA", 1019, 700020, b""), (IN, "FA", 700020, 1020, b""),
    (OUT, "A", 1020, 700021, b""),
]


def session_rows() -> list[dict]:
    """Each packet of SESSION through the model: the tuple on each side, the state after."""
    from .packets import frame
    from .trace import configure
    state = _demo_lab()
    nat = Nat(**state.config.nat_args(), port_seed=1)
    configure(nat, state)
    api, web, eni = state.function("api"), state.host("web"), state.enis[0]
    rows, nat_port = [], None
    for i, (d, flags, seq, ack, payload) in enumerate(SESSION):
        if d == OUT:
            raw = frame(api.mac, state.inside.mac, api.ipv4, web.ipv4, 40000, 8080, "tcp",
                        flags, seq, ack, payload=payload)
        else:
            raw = frame(web.mac, eni.mac, web.ipv4, eni.ipv4, 8080, nat_port, "tcp", flags,
                        seq, ack, payload=payload)
        verdict, reason, _, cid = nat.translate([bytearray(raw)], d, 1000 + 10 * i, eni=0)[0]
        conn = nat.get(cid)
        nat_port = conn.nat_port
        ends = (f"{api.ipv4}:40000", f"{eni.ipv4}:{conn.nat_port}", f"{web.ipv4}:8080")
        inside = f"{ends[0]} > {ends[2]}" if d == OUT else f"{ends[2]} > {ends[0]}"
        outside = f"{ends[1]} > {ends[2]}" if d == OUT else f"{ends[2]} > {ends[1]}"
        rows.append({"dir": "out" if d == OUT else "in", "flags": flags, "bytes": len(payload),
                     "inside": inside, "outside": outside, "state": conn.state,
                     "verdict": verdict})
    return rows


def session_text(rows) -> str:
    out = ["# api -> web:8080 through the reference model: each packet, both tuples, the state after",
           "dir  flags  data  inside (functions' side)               outside (customer VPC side)"
           "               state after"]
    for r in rows:
        out.append(f"{r['dir']:<4} {r['flags']:<6} {r['bytes']:>4}  {r['inside']:<39} "
                   f"{r['outside']:<40} {r['state']}")
    return "\n".join(out) + "\n"


POOL_SAMPLE = 2500          # connections between two samples
POOL_TOTAL = 80000


def pool_samples() -> tuple[list[tuple[int, list[int]]], list[int]]:
    """UDP connections opened one by one by two functions of one group; past the high-water
    mark of the newest ENI a new ENI joins (what the ENI manager does). Returns (connections
    opened, ports in use per ENI) every POOL_SAMPLE connections, and the connection counts at
    which each new ENI was taken."""
    from ..config import default_config
    from .packets import frame
    high_water = default_config().hyperplane.eni_high_water
    nat = Nat(port_seed=1, capacity=1 << 17)
    group = nat.add_group()
    nat.group_add_eni(group, nat.add_eni("10.0.1.4"))
    sources = ["10.200.0.11", "10.200.0.12"]
    for s in sources:
        nat.add_source(s, group)
    template = {s: bytearray(frame("02:00:00:00:00:01", "02:00:00:00:00:02", s, "10.0.1.10",
                                   1, 53, "udp")) for s in sources}
    samples, taken = [], []
    for n in range(1, POOL_TOTAL + 1):
        src = sources[n % 2]
        raw = bytearray(template[src])
        sport = 1024 + n // 2
        raw[34:36] = sport.to_bytes(2, "big")
        raw[40:42] = b"\0\0"                    # UDP over IPv4 without a checksum
        nat.translate([raw], OUT, n)
        newest = len(nat.enis) - 1
        st = nat.pool_stats(newest, 4, 17)
        if st["in_use"] >= high_water * st["size"]:
            nat.group_add_eni(group, nat.add_eni(f"10.0.1.{5 + newest}"))
            taken.append(n)
        if n % POOL_SAMPLE == 0:
            samples.append((n, [nat.pool_stats(e, 4, 17)["in_use"] for e in range(len(nat.enis))]))
    return samples, taken


def pool_text(samples, taken) -> str:
    out = ["# UDP connections opened -> ports in use per ENI (65,000 ports each; a new ENI at "
           "the high-water mark)", "connections  " + "  ".join(f"ENI {i}" for i in
                                                                range(len(samples[-1][1])))]
    for n, used in samples:
        out.append(f"{n:>11}  " + "  ".join(f"{u:>5}" for u in used))
    out += [f"ENI {e} taken after {n} connections" for e, n in enumerate(taken, 1)]
    return "\n".join(out) + "\n"


# -- drawing --------------------------------------------------------------------------------

def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def render_dot(source: str, svg: Path) -> None:
    out = subprocess.run(["dot", "-Tsvg"], input=source, capture_output=True, text=True,
                         check=True).stdout
    head, _, rest = out.partition("\n")
    svg.write_text(f"{head}\n<!-- {HASH_MARK}{digest(source)} -->\n{rest}")


def draw_session(rows, text: str, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(11, 0.55 * len(rows) + 1.6))
    xs = {"api": 0.0, "NAT": 1.0, "web": 2.0}
    top = len(rows) + 0.5
    for name, x in xs.items():
        ax.plot([x, x], [0.3, top], color="#888", lw=1)
        ax.text(x, top + 0.1, name if name != "NAT" else "Hyperplane NAT\n(ENI 0)",
                ha="center", va="bottom", fontsize=10, weight="bold")
    for i, r in enumerate(rows):
        y = top - 0.8 - i
        label = r["flags"] + (f" +{r['bytes']} B" if r["bytes"] else "")
        a, b = ("api", "web") if r["dir"] == "out" else ("web", "api")
        for (p, q), tup in (((a, "NAT"), r["inside" if a == "api" else "outside"]),
                            (("NAT", b), r["outside" if b == "web" else "inside"])):
            ax.annotate("", xy=(xs[q], y), xytext=(xs[p], y),
                        arrowprops=dict(arrowstyle="->", color="#1f77b4" if r["dir"] == "out"
                                        else "#d62728"))
            ax.text((xs[p] + xs[q]) / 2, y + 0.08, f"{label}  {tup}", ha="center", fontsize=7)
        ax.text(2.1, y, r["state"], va="center", fontsize=9, family="monospace")
    ax.set_xlim(-0.2, 2.7)
    ax.set_ylim(0, top + 0.8)
    ax.axis("off")
    ax.set_title("One connection through the reference model: each packet, the tuple on each "
                 "side, the state after it", fontsize=10)
    fig.savefig(png, dpi=110, bbox_inches="tight", metadata={"Description": HASH_MARK + digest(text)})
    plt.close(fig)


def draw_pool(samples, taken, text: str, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = [n for n, _ in samples]
    for e in range(len(samples[-1][1])):
        ax.plot(xs, [used[e] if e < len(used) else 0 for _, used in samples], label=f"ENI {e}")
    for e, n in enumerate(taken, 1):
        ax.axvline(n, color="#999", ls=":", lw=1)
        ax.text(n, 66000, f" ENI {e} taken after {n} connections", fontsize=8, va="bottom")
    ax.axhline(65000, color="#444", lw=0.8)
    ax.set_xlabel("UDP connections opened")
    ax.set_ylabel("ports in use")
    ax.set_ylim(0, 72000)
    ax.legend(loc="center right")
    ax.set_title("An ENI's 65,000-port pool filling up; past the high-water mark a new ENI "
                 "takes the new connections", fontsize=9)
    fig.savefig(png, dpi=110, bbox_inches="tight", metadata={"Description": HASH_MARK + digest(text)})
    plt.close(fig)


def text_forms() -> dict[str, str]:
    """The text form of every picture, made from the model now."""
    return {"tcp-states.dot": tcp_dot(), "udp-states.dot": udp_dot(),
            "session.txt": session_text(session_rows()), "port-pool.txt": pool_text(*pool_samples())}


IMAGES = {"tcp-states.dot": "tcp-states.svg", "udp-states.dot": "udp-states.svg",
          "session.txt": "session.png", "port-pool.txt": "port-pool.png"}


def image_hash(path: Path) -> str | None:
    """The hash of the text form an image was drawn from (its SVG comment or PNG text)."""
    data = path.read_bytes()
    at = data.find(HASH_MARK.encode())
    return data[at + len(HASH_MARK):at + len(HASH_MARK) + 64].decode() if at >= 0 else None


def stale(out_dir: Path = OUT_DIR, forms: dict | None = None) -> list[str]:
    """The pictures whose text form or image no longer matches the model."""
    forms = forms if forms is not None else text_forms()
    bad = []
    for name, text in forms.items():
        src, img = out_dir / name, out_dir / IMAGES[name]
        if (not src.exists() or src.read_text() != text or not img.exists()
                or image_hash(img) != digest(text)):
            bad.append(name)
    return bad


def write_all(out_dir: Path = OUT_DIR) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, (samples, taken) = session_rows(), pool_samples()
    forms = {"tcp-states.dot": tcp_dot(), "udp-states.dot": udp_dot(),
             "session.txt": session_text(rows), "port-pool.txt": pool_text(samples, taken)}
    for name, text in forms.items():
        (out_dir / name).write_text(text)
    render_dot(forms["tcp-states.dot"], out_dir / IMAGES["tcp-states.dot"])
    render_dot(forms["udp-states.dot"], out_dir / IMAGES["udp-states.dot"])
    draw_session(rows, forms["session.txt"], out_dir / IMAGES["session.txt"])
    draw_pool(samples, taken, forms["port-pool.txt"], out_dir / IMAGES["port-pool.txt"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m hyperplane.teach.pictures")
    ap.add_argument("--check", action="store_true", help="only say which pictures are stale")
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    args = ap.parse_args(argv)
    if args.check:
        bad = stale(args.out)
        for name in bad:
            print(f"stale: {args.out / name} (run: make pictures)")
        return 1 if bad else 0
    write_all(args.out)
    print(f"pictures written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
