"""Test certificates made with the openssl command line (Python's ssl module cannot make
them): a throwaway CA and server certificates it signs, for the mock provider's TLS
listener (the node trusts the CA through --upstream-ca-file) and for the node's own
listener in the certificate-reload test.

Everything is written into a directory the caller owns; keys are EC P-256 (fast)."""

import os
import subprocess


def _openssl(*args, cwd=None):
    subprocess.run(["openssl", *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_ca(directory, name="llmrelay-test-ca"):
    """Creates ca.key + ca.pem in directory; returns (cert_path, key_path)."""
    os.makedirs(directory, exist_ok=True)
    key = os.path.join(directory, name + ".key")
    cert = os.path.join(directory, name + ".pem")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=" + name,
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def make_server_cert(directory, ca, name="server", dns=("localhost",), ips=("127.0.0.1",)):
    """Creates NAME.key + NAME.pem signed by ca = (ca_cert, ca_key), valid for the given
    DNS names and IP addresses; returns (cert_path, key_path)."""
    ca_cert, ca_key = ca
    os.makedirs(directory, exist_ok=True)
    key = os.path.join(directory, name + ".key")
    csr = os.path.join(directory, name + ".csr")
    cert = os.path.join(directory, name + ".pem")
    ext = os.path.join(directory, name + ".ext")
    san = ",".join(["DNS:" + d for d in dns] + ["IP:" + i for i in ips])
    with open(ext, "w") as f:
        f.write("subjectAltName=%s\nbasicConstraints=CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\n" % san)
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=" + (dns[0] if dns else name))
    _openssl("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
             "-out", cert, "-days", "2", "-extfile", ext)
    return cert, key


def make_self_signed(directory, name="selfsigned", cn="localhost"):
    """A self-signed server certificate (no CA); returns (cert_path, key_path)."""
    os.makedirs(directory, exist_ok=True)
    key = os.path.join(directory, name + ".key")
    cert = os.path.join(directory, name + ".pem")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=" + cn,
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1")
    return cert, key
