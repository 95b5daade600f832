"""course_utils.doctor: says what is wrong and what to do, and never raises."""

import shutil
from importlib.metadata import PackageNotFoundError
from pathlib import Path

from course_utils import doctor

PINS = {"torch": "2.13.0", "numpy": "2.4.6", "jupyterlab": "4.6.6", "transformers": "5.23.0"}


def fake_lookup(installed):
    def lookup(name):
        if name not in installed:
            raise PackageNotFoundError(name)
        return installed[name]

    return lookup


def by_name(findings):
    return {f.what.split()[0]: f.status for f in findings}


def test_missing_is_a_failure_another_version_a_warning_and_cpu_builds_match():
    found = doctor.check_packages(
        PINS, colab=False, lookup=fake_lookup({"torch": "2.13.0+cpu", "numpy": "2.3.0", "transformers": "5.23.0"})
    )
    assert by_name(found) == {"torch": "ok", "numpy": "warn", "jupyterlab": "fail", "transformers": "ok"}
    assert all(f.advice for f in found if f.status != "ok")


def test_colab_needs_no_jupyterlab_accepts_its_own_builds_but_not_transformers_4():
    found = doctor.check_packages(
        PINS, colab=True, lookup=fake_lookup({"torch": "2.9.0+cu126", "numpy": "2.0.2", "transformers": "4.57.1"})
    )
    assert by_name(found) == {"torch": "ok", "numpy": "ok", "transformers": "fail"}
    assert "restart" in next(f.advice for f in found if f.status == "fail")


def test_python_versions():
    # numpy 2.4 / transformers 5 have no release for 3.10: pip's dry run fails there (README, "Python")
    assert [doctor.check_python((3, m))[0].status for m in (9, 10, 11, 12, 13)] == ["fail", "fail", "ok", "ok", "warn"]
    assert "PY=python3.11" in doctor.check_python((3, 10))[0].advice


def test_macos_14_on_apple_silicon_only():
    ok = [("Darwin", "arm64", "14.5"), ("Darwin", "arm64", "14"), ("Darwin", "arm64", "15.1"), ("Linux", "x86_64", "")]
    ok += [("Windows", "AMD64", ""), ("Linux", "aarch64", "")]
    for system, machine, release in ok:
        assert doctor.check_os(system, machine, release)[0].status == "ok", (system, machine, release)
    intel = doctor.check_os("Darwin", "x86_64", "14.5")[0]  # an Intel Mac, or Rosetta's Python on Apple Silicon
    assert intel.status == "fail" and "Colab" in intel.advice and "arm64" in intel.advice, intel
    old = doctor.check_os("Darwin", "arm64", "13.6.1")[0]
    assert old.status == "fail" and "macOS 14" in old.advice, old
    assert doctor.check_os("Linux", "armv7l", "")[0].status == "warn"
    assert doctor.check_os()[0].status == "ok"  # this machine (CI runs ubuntu, macos-14 and windows)


def test_requirements_pins_are_read(tmp_path):
    req = tmp_path / "r.txt"
    req.write_text("# comment\ntorch==2.13.0\nnumpy == 2.4.6  # why\nfoo>=1\nbar==1.0 ; sys_platform == 'linux'\n")
    assert doctor.pinned_requirements(req) == {"torch": "2.13.0", "numpy": "2.4.6", "bar": "1.0"}
    assert doctor.check_packages({}, colab=False)[0].status == "warn"


def test_a_changed_checkpoint_is_reported_not_raised(tmp_path):
    assets = tmp_path / "assets"
    shutil.copytree(doctor.ASSETS, assets)
    assert "match their sha256" in doctor._checkpoints(assets)
    target = assets / Path((assets / "ft_base.sha256").read_text().split()[1])
    target.write_bytes(target.read_bytes()[:-1] + b"\x00")
    finding = doctor._check("course checkpoints", lambda: doctor._checkpoints(assets), "advice")
    assert finding.status == "fail" and "does not match" in finding.what


def test_this_machine_is_ready_and_main_never_fails(capsys):
    findings = doctor.run()
    out = capsys.readouterr().out
    assert [f for f in findings if f.status == "fail"] == [], out
    assert "Ready for the course." in out and doctor.main([]) == 0
    assert doctor.check_disk(min_free_gb=1e9)[0].status == "warn"


def test_colab_installs_torchao_only_over_the_torch_it_is_built_for(capsys):
    pin = doctor.pinned_requirements()["torchao"]
    calls = []
    colab_torch = fake_lookup({"torch": "2.9.0+cu126"})  # Colab's own build
    assert doctor.colab_setup(lookup=colab_torch, run_pip=calls.append, loaded={}) == [] and calls == []
    said = capsys.readouterr().out
    assert "torch 2.9.0+cu126" in said and "skipped" in said, said
    fits, why = doctor.torchao_status(lookup=colab_torch)
    assert not fits and why in said
    same = fake_lookup({"torch": "2.13.0+cu126"})
    assert doctor.colab_setup(lookup=same, run_pip=calls.append, loaded={}) == ["torchao"]
    assert calls == [[f"torchao=={pin}"]] and capsys.readouterr().out == ""
    assert doctor.torchao_status(lookup=fake_lookup({"torch": "2.13.0", "torchao": pin})) == (True, "")
    # in Colab a torchao left out on purpose is a warning (the welcome check still passes), elsewhere a failure
    pins = {"torch": "2.13.0", "torchao": pin}
    assert by_name(doctor.check_packages(pins, colab=True, lookup=colab_torch))["torchao"] == "warn"
    assert by_name(doctor.check_packages(pins, colab=False, lookup=colab_torch))["torchao"] == "fail"
    assert by_name(doctor.check_packages(pins, colab=True, lookup=same))["torchao"] == "fail"


def test_colab_setup_asks_for_a_restart_only_if_a_replaced_package_was_imported(capsys):
    here = fake_lookup({"torch": "2.13.0", "torchao": "0.18.0"})
    doctor.colab_setup(lookup=here, run_pip=list, loaded={})
    assert "restart" not in capsys.readouterr().out
    doctor.colab_setup(lookup=here, run_pip=list, loaded={"transformers": object()})
    assert "transformers changed after this kernel imported them: restart the runtime" in capsys.readouterr().out
