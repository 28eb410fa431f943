"""pytest fixtures for the end-to-end tests: one etcd, one mock provider and a node
factory per test file (module scope), each in the file's own temp directory and on its own
free ports. Finalizers stop everything; the harness's atexit hook kills what is left.
When a test fails, the tails of every live process's logs are attached to the report."""

import os
import secrets

import pytest

import harness


def _require(name):
    path = harness.binary(name)
    if not os.access(path, os.X_OK):
        pytest.fail("%s not found at %s (set LLMRELAY_BIN to a build directory)" % (name, path),
                    pytrace=False)
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, request):
    return str(tmp_path_factory.mktemp(request.module.__name__.replace("test_", "")))


@pytest.fixture(scope="module")
def etcd(workdir):
    e = harness.Etcd(os.path.join(workdir, "etcd"))
    try:
        e.start()
        yield e
    finally:
        e.kill()


@pytest.fixture(scope="module")
def mock(workdir):
    _require("mockprovider")
    m = harness.Mock(os.path.join(workdir, "mock"))
    try:
        m.start()
        yield m
    finally:
        m.proc.kill()


class NodeFactory:
    """Starts nodes that share the module's etcd and prefix; stops them all at the end."""

    def __init__(self, workdir, etcd):
        self.workdir = workdir
        self.etcd = etcd
        self.prefix = "/llmrelay-test-%s/" % secrets.token_hex(4)
        self.admin_token = "adm-" + secrets.token_hex(16)
        self.nodes = []

    def make(self, name, etcd_urls=None, **kw):
        _require("llmrelay")
        kw.setdefault("admin_token", self.admin_token)
        n = harness.Node(self.workdir, name, etcd_urls or self.etcd.url, self.prefix, **kw)
        self.nodes.append(n)
        return n

    def start(self, name, wait=True, **kw):
        return self.make(name, **kw).start(wait=wait)

    def stop_all(self):
        """Stops every node (SIGTERM); returns what went wrong: a node that did not exit 0
        or whose stderr holds a sanitizer report."""
        problems = []
        for n in self.nodes:
            if n.proc.popen is None:
                continue
            was_running = n.running()
            try:
                code = n.stop(timeout=15)
            except Exception:  # noqa: BLE001 - teardown must go on
                n.kill()
                code = None
            if was_running and code != 0:
                problems.append("node %s exited with %r on SIGTERM" % (n.name, code))
            err = n.proc.stderr_text()
            for marker in SANITIZER_MARKERS:
                if marker in err:
                    problems.append("node %s: sanitizer report (%s):\n%s"
                                    % (n.name, marker, harness.tail(n.proc.stderr_path, 6000)))
                    break
        return problems


SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


@pytest.fixture(scope="module")
def nodes(workdir, etcd):
    f = NodeFactory(workdir, etcd)
    try:
        yield f
    finally:
        problems = f.stop_all()
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def node(nodes, mock):
    return nodes.start("n1")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for p in harness.live_processes() + [p for p in harness._REGISTRY
                                               if not p.running() and p.name.startswith("node")]:
            rep.sections.append(("process %s (pid %s)" % (p.name, p.popen.pid if p.popen
                                                           else "-"), p.log_tails()))
