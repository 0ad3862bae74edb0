"""The benchmark's results rows and table (no root, no traffic)."""

from hyperplane.benchmark import report
from hyperplane.benchmark.args import TEST_NAMES
from hyperplane.benchmark.suite import TESTS, Flows


def test_results_are_medians_with_the_ratio_to_the_kernel_nat():
    values = {("tcp-1", "routing"): [10.0, 12.0, 30.0], ("tcp-1", "kernel-nat"): [8.0, 9.0, 10.0],
              ("tcp-1", "hyperplane"): [4.0, 4.5, 5.0]}
    rows = {r["middle"]: r for r in report.results(values)}
    assert rows["routing"]["value"] == 12.0
    assert rows["hyperplane"]["value"] == 4.5
    assert rows["hyperplane"]["ratio_to_kernel_nat"] == 0.5
    assert rows["kernel-nat"]["ratio_to_kernel_nat"] == 1.0
    assert rows["hyperplane"]["unit"] == "Gbit/s" and rows["hyperplane"]["repeats"] == 3


def test_no_kernel_nat_figure_means_no_ratio():
    rows = report.results({("rtt-idle-p99", "hyperplane"): [30.0]})
    assert rows == [{"test": "rtt-idle-p99", "middle": "hyperplane", "value": 30.0, "unit": "us",
                     "repeats": 1, "limited_by_generator": False, "ratio_to_kernel_nat": None,
                     "ratio_to_kernel_nat_flowtable": None}]


def test_table_marks_figures_the_generator_capped():
    values = {("udp64-1flow-zeroloss", "routing"): [150.0],
              ("udp64-1flow-zeroloss", "kernel-nat"): [100.0],
              ("udp64-1flow-zeroloss", "hyperplane"): [120.0]}
    rows = report.results(values, {("udp64-1flow-zeroloss", "routing")})
    text = report.table(rows)
    assert "150*" in text and "1.20x" in text and report.LIMITED_NOTE in text
    md = report.markdown(rows)
    assert "| udp64-1flow-zeroloss | kpps | 150* | 100 | 120 | 1.20x | - |" in md


def test_flows_cover_a_million_with_at_most_50000_source_ports():
    f = Flows("scale", "scale", 1_000_000)
    assert f.nsports == 50_000 and f.ndports == 20 and f.nsports * f.ndports >= f.n
    assert Flows("one", "bulk", 1).nsports == 1


def test_the_cli_lists_the_tests_in_run_order():
    assert tuple(t.name for t in TESTS) == TEST_NAMES


def test_hyperplane_is_its_worst_placement_and_each_placement_has_its_column():
    from hyperplane.benchmark.run import worst_placement
    runs = {0: {"udp64-1flow-zeroloss": 15.0, "rtt-idle-p50": 40.0},
            1: {"udp64-1flow-zeroloss": 200.0, "rtt-idle-p50": 90.0}, 2: None}
    assert worst_placement(runs) == {"udp64-1flow-zeroloss": (15.0, 0), "rtt-idle-p50": (90.0, 1)}
    values = {("tcp-1", "kernel-nat"): [10.0], ("tcp-1", "hyperplane"): [5.0],
              ("tcp-1", "hyperplane@cpu1"): [9.0], ("tcp-1", "hyperplane@cpu0"): [5.0]}
    rows = report.results(values)
    assert [r["middle"] for r in rows] == ["kernel-nat", "hyperplane", "hyperplane@cpu0",
                                           "hyperplane@cpu1"]
    assert "hyperplane@cpu0" in report.table(rows).splitlines()[0]


def test_the_machine_record_says_how_idle_cpus_sleep(tmp_path):
    """bench.json's machine: the cpuidle driver and the guest halt polling, which decide what
    waking the forwarding thread on an idle virtual CPU costs; None where the files are not."""
    from hyperplane.benchmark.run import cpu_idle
    assert cpu_idle(str(tmp_path)) == {"cpuidle_driver": None, "guest_halt_poll_ns": None}
    poll = tmp_path / "module/haltpoll/parameters/guest_halt_poll_ns"
    driver = tmp_path / "devices/system/cpu/cpuidle/current_driver"
    for path, text in ((poll, "200000\n"), (driver, "haltpoll\n")):
        path.parent.mkdir(parents=True)
        path.write_text(text)
    assert cpu_idle(str(tmp_path)) == {"cpuidle_driver": "haltpoll", "guest_halt_poll_ns": 200000}
