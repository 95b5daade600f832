"""course_utils.net: a free TCP port is one this machine lets a server bind."""

import socket

import pytest

from course_utils.net import free_port


def test_free_port_can_be_bound_and_listened_on():
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen(1)
        assert s.getsockname()[1] == port


def test_a_port_in_use_is_not_handed_out():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = busy.getsockname()[1]
        assert all(free_port() != taken for _ in range(20))


@pytest.mark.parametrize("host", ["", None, 127])
def test_bad_host_is_a_type_error_naming_it(host):
    with pytest.raises(TypeError, match="host must be a non-empty str"):
        free_port(host)
