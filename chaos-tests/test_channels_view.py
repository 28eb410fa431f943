# ctest-labels: e2e
"""The channels' circuit breakers as operators see them: `provider show` (--json and text)
lists one channel per upstream key with its breaker state and counters, `provider list`
counts channels per state, /metrics carries llmrelay_channel_state / _failures_total /
_opens_total for every channel of the current config, and the breaker flags are validated
at start-up (command line and --config file). Nothing here drives a breaker through
requests (the failover tests do): a fresh provider's channels are closed with zeros."""

import json
import subprocess

import httpx
import pytest

from harness import binary, provider_base_url, rand_id, wait_for

@pytest.fixture(scope="module")
def node(nodes, mock):
    return nodes.start("n1", extra_args=["--breaker-threshold", "3", "--breaker-window", "10s",
                                         "--breaker-cooldown", "2s", "--upstream-max-attempts", "2",
                                         "--upstream-retry-budget", "5s"])


@pytest.fixture(scope="module")
def provider(node, mock):
    tag = rand_id()
    name = "p-ch-" + tag
    keys = ["sk-up-%s-first-AAAA1111" % tag, "sk-up-%s-second-BBBB2222" % tag]
    node.admin.put_provider(name, provider_base_url(mock, "openai"), keys, ["m-ch-" + tag])
    return name, keys


def ctl(node, *args):
    p = subprocess.run([binary("llmrelayctl"), "--admin", node.admin_url, "--token-file", node.token_file]
                       + list(args), capture_output=True, text=True, timeout=30)
    return p.returncode, p.stdout, p.stderr


def metrics_text(node):
    r = httpx.get(node.admin_url + "/metrics", timeout=5)
    assert r.status_code == 200
    return r.text


def test_provider_show_json_lists_closed_channels(node, provider):
    name, keys = provider

    def shown():
        rc, out, err = ctl(node, "--json", "provider", "show", name)
        return json.loads(out) if rc == 0 else None
    p = wait_for(shown, 10, "provider %s visible" % name)
    chans = p["channels"]
    assert [c["key_index"] for c in chans] == [0, 1]
    for c, k in zip(chans, keys):
        assert c["state"] == "closed"
        assert c["failures"] == 0 and c["opens"] == 0 and c["probes"] == 0
        assert c["workers_not_closed"] == 0
        assert c["last_change"] is None
        assert c["key"].endswith(k[-4:]) and k[:-4] not in c["key"]
    # the admin API answers the same
    body = node.admin.request("GET", "/admin/v1/providers/" + name, expect=200).json()
    assert len(body["channels"]) == 2
    assert all(c["state"] == "closed" for c in body["channels"])


def test_provider_show_text_and_list(node, provider):
    name, keys = provider
    rc, out, err = ctl(node, "provider", "show", name)
    assert rc == 0, err
    assert "channels" in out and "STATE" in out
    lines = [l for l in out.splitlines() if l.strip().startswith(("0 ", "1 "))]
    assert len(lines) == 2, out
    assert all("closed" in l for l in lines), out
    for k in keys:
        assert k[:-4] not in out  # at most the last 4 characters of a key
    rc, out, err = ctl(node, "--json", "provider", "list")
    assert rc == 0, err
    mine = [p for p in json.loads(out)["providers"] if p["name"] == name]
    assert mine and mine[0]["channel_states"] == {"closed": 2, "half_open": 0, "open": 0}


def test_metrics_series(node, provider):
    name, keys = provider

    def series():
        text = metrics_text(node)
        want = ['llmrelay_channel_state{provider="%s",key_index="%d",state="closed"} 1' % (name, i)
                for i in (0, 1)]
        return text if all(w in text for w in want) else None
    text = wait_for(series, 5, "channel series of %s in /metrics" % name)
    for i in (0, 1):
        for st in ("half_open", "open"):
            assert 'llmrelay_channel_state{provider="%s",key_index="%d",state="%s"} 0' % (name, i, st) in text
        assert 'llmrelay_channel_failures_total{provider="%s",key_index="%d"} 0' % (name, i) in text
        assert 'llmrelay_channel_opens_total{provider="%s",key_index="%d"} 0' % (name, i) in text
    for fam, typ in (("llmrelay_channel_state", "gauge"), ("llmrelay_channel_failures_total", "counter"),
                     ("llmrelay_channel_opens_total", "counter")):
        assert "# HELP %s " % fam in text
        assert "# TYPE %s %s\n" % (fam, typ) in text
    assert "sk-up-" not in text


def test_metrics_follow_config(node, mock, provider):
    """A provider deleted leaves /metrics; a key added shows up as a new channel."""
    tag = rand_id()
    name = "p-ch2-" + tag
    node.admin.put_provider(name, provider_base_url(mock, "openai"), ["sk-up-%s-only-CCCC3333" % tag],
                            ["m-ch2-" + tag])
    wait_for(lambda: ('provider="%s",key_index="0"' % name) in metrics_text(node), 10, "new provider in /metrics")
    node.admin.put_provider(name, provider_base_url(mock, "openai"),
                            ["sk-up-%s-only-CCCC3333" % tag, "sk-up-%s-more-DDDD4444" % tag], ["m-ch2-" + tag])
    wait_for(lambda: ('provider="%s",key_index="1"' % name) in metrics_text(node), 10, "second key in /metrics")
    node.admin.delete_provider(name)
    wait_for(lambda: ('provider="%s"' % name) not in metrics_text(node), 10, "deleted provider gone from /metrics")


def run_node_args(*args, timeout=15):
    return subprocess.run([binary("llmrelay")] + list(args), capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args,needle", [
    (["--breaker-threshold", "0"], "--breaker-threshold"),
    (["--breaker-threshold", "17"], "--breaker-threshold"),
    (["--upstream-max-attempts", "0"], "--upstream-max-attempts"),
    (["--upstream-max-attempts", "11"], "--upstream-max-attempts"),
    (["--upstream-retry-budget", "0"], "--upstream-retry-budget"),
    (["--breaker-window", "30"], "--breaker-window"),
    (["--breaker-cooldown", "-1s"], "--breaker-cooldown"),
])
def test_bad_flags_refused(args, needle):
    p = run_node_args(*args)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert needle in p.stderr


def test_bad_yaml_value_refused(tmp_path):
    cfg = tmp_path / "node.yaml"
    cfg.write_text("name: n-yaml\nbreaker_threshold: 0\n")
    p = run_node_args("--config", str(cfg))
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "breaker-threshold" in p.stderr and ":2:" in p.stderr


def test_help_lists_flags():
    p = run_node_args("--help")
    assert p.returncode == 0
    for flag, default in (("--upstream-max-attempts", "3"), ("--upstream-retry-budget", "30s"),
                          ("--breaker-threshold", "5"), ("--breaker-window", "30s"),
                          ("--breaker-cooldown", "30s")):
        line = [l for l in p.stdout.splitlines() if l.strip().startswith(flag + " ")]
        assert line and "(default: %s)" % default in line[0], (flag, p.stdout)
