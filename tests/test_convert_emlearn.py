"""emlearn C for scikit-learn trees and MLPs, compiled with gcc and compared with scikit-learn.

Needs the ``mcu`` extra (emlearn) and gcc; fails, not skips, without them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.tree import DecisionTreeClassifier

from edgeops.convert.emlearn_c import (
    METHODS,
    EmlearnCRunner,
    sklearn_to_emlearn_c,
    validate_c_name,
)
from edgeops.errors import InvalidInput, MissingExtra


@pytest.fixture(scope="module")
def forest(digits) -> RandomForestClassifier:
    X_train, _, y_train, _ = digits
    return RandomForestClassifier(n_estimators=10, max_depth=8, random_state=0).fit(
        X_train, y_train
    )


@pytest.fixture(scope="module")
def mlp(digits) -> MLPClassifier:
    X_train, _, y_train, _ = digits
    return MLPClassifier(hidden_layer_sizes=(32,), random_state=0, max_iter=300).fit(
        X_train, y_train
    )


@pytest.fixture(scope="module")
def forest_c(forest) -> str:
    return sklearn_to_emlearn_c(forest, "digits_rf")


@pytest.fixture(scope="module")
def forest_runner(forest_c):
    with EmlearnCRunner(forest_c, "digits_rf", 64) as runner:
        yield runner


@pytest.fixture(scope="module")
def mlp_runner(mlp):
    with EmlearnCRunner(sklearn_to_emlearn_c(mlp, "digits_mlp"), "digits_mlp", 64) as runner:
        yield runner


def test_forest_c_agrees_exactly_with_sklearn(forest, forest_runner, digits):
    X_train, X_test, _, _ = digits
    assert np.array_equal(forest_runner.predict(X_test), forest.predict(X_test))
    assert np.array_equal(forest_runner.predict(X_train), forest.predict(X_train))


def test_mlp_c_agrees_exactly_with_sklearn(mlp, mlp_runner, digits):
    X_train, X_test, _, _ = digits
    assert np.array_equal(mlp_runner.predict(X_test), mlp.predict(X_test))
    assert np.array_equal(mlp_runner.predict(X_train), mlp.predict(X_train))


@pytest.mark.parametrize(
    "estimator",
    [DecisionTreeClassifier(random_state=0), ExtraTreesClassifier(n_estimators=5, random_state=0)],
    ids=["decision-tree", "extra-trees"],
)
def test_other_trees_agree_exactly(estimator, digits):
    X_train, X_test, y_train, _ = digits
    estimator.fit(X_train, y_train)
    with EmlearnCRunner(sklearn_to_emlearn_c(estimator, "tree"), "tree", 64) as runner:
        assert np.array_equal(runner.predict(X_test), estimator.predict(X_test))


def test_values_on_a_threshold_go_left_as_in_sklearn():
    """sklearn: left when x <= t; emlearn's C: left when x < t. Values on t must agree."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64)
    X[:10, 2] = 2.0  # feature 2 takes two values: its split threshold is their midpoint
    X[10:, 2] = 0.0
    y[:10] = 2
    tree = DecisionTreeClassifier(random_state=0).fit(X, y)
    inner = tree.tree_.feature >= 0
    thresholds = tree.tree_.threshold[inner].astype(np.float32)
    assert 1.0 in thresholds.tolist()
    probes = np.repeat(X[:1], 3 * len(thresholds), axis=0)
    for i, (feature, t) in enumerate(zip(tree.tree_.feature[inner], thresholds, strict=True)):
        for j, value in enumerate((np.nextafter(t, -np.inf), t, np.nextafter(t, np.inf))):
            probes[3 * i + j, feature] = value
    with EmlearnCRunner(sklearn_to_emlearn_c(tree, "edge"), "edge", 3) as runner:
        assert np.array_equal(runner.predict(probes), tree.predict(probes))
        assert np.array_equal(runner.predict(X), tree.predict(X))


def test_header_shape(forest_c, forest):
    assert forest_c.startswith("/* digits_rf: RandomForestClassifier as C99")
    assert "#ifndef EDGEOPS_MODEL_DIGITS_RF_H" in forest_c
    assert re.search(r"int32_t\s+digits_rf_predict\(const float \*features", forest_c)
    # each split "x <= t" is written "x < u", u the next float32 above t, printed exactly
    printed = {np.float32(v) for v in re.findall(r"features\[\d+\] < ([-+0-9.e]+)f\)", forest_c)}
    expected = set()
    for tree in forest.estimators_:
        for t in tree.tree_.threshold[tree.tree_.feature >= 0]:
            below = np.float32(t) if float(np.float32(t)) <= t else np.nextafter(np.float32(t), -1)
            expected.add(np.nextafter(below, np.float32(np.inf)))
    assert printed == expected
    assert np.float32(8.5) not in printed


def test_mlp_weights_are_printed_exactly(mlp):
    code = sklearn_to_emlearn_c(mlp, "digits_mlp")
    match = re.search(r"digits_mlp_layer_0_weights\[2048\] = \{([^}]*)\}", code)
    assert match is not None
    printed = np.array([np.float32(v.strip().rstrip("f")) for v in match.group(1).split(",")])
    assert np.array_equal(printed, mlp.coefs_[0].astype(np.float32).ravel())


def test_latency_has_the_measure_keys(forest_runner, mlp_runner, digits):
    _, X_test, _, _ = digits
    for runner in (forest_runner, mlp_runner):
        latency = runner.latency_ms(X_test, samples=50)
        assert set(latency) == {"latency_ms_p50", "latency_ms_p95"}
        assert 0.0 < latency["latency_ms_p50"] <= latency["latency_ms_p95"]


@pytest.mark.parametrize("name", ["1model", "my-model", "", "int", "main", "__x", "_Model", "a b"])
def test_bad_c_identifiers_raise(name, forest):
    with pytest.raises(InvalidInput, match=r"C identifier|reserved"):
        sklearn_to_emlearn_c(forest, name)
    assert validate_c_name("ok_name_2") == "ok_name_2"


def test_unsupported_estimator_and_method(forest, mlp):
    with pytest.raises(InvalidInput, match="not available for LogisticRegression"):
        sklearn_to_emlearn_c(LogisticRegression(), "m")
    with pytest.raises(InvalidInput, match="use method='loadable'"):
        sklearn_to_emlearn_c(mlp, "m", method="inline")
    with pytest.raises(InvalidInput, match="use method='inline'"):
        sklearn_to_emlearn_c(forest, "m", method="loadable")
    assert METHODS["RandomForestClassifier"] == "inline"
    assert METHODS["MLPClassifier"] == "loadable"


def test_broken_code_raises_with_the_compiler_error():
    code = (
        "#include <stdint.h>\nint32_t broken_predict(const float *f, int32_t n) { return nope; }\n"
    )
    with pytest.raises(
        InvalidInput, match=r"C compile of broken failed: .*error: .*nope"
    ) as caught:
        EmlearnCRunner(code, "broken", 4)
    assert "nope" in caught.value.compiler_output


def test_warnings_are_errors():
    code = (
        "#include <stdint.h>\n"
        "int32_t noisy_predict(const float *f, int32_t n) { int unused; (void)f; return n; }\n"
    )
    with pytest.raises(InvalidInput, match="unused-variable"):
        EmlearnCRunner(code, "noisy", 4)


def test_runner_files_and_cleanup(forest_c, tmp_path):
    kept = tmp_path / "build"
    with EmlearnCRunner(forest_c, "digits_rf", 64, workdir=kept) as runner:
        assert runner.predict(np.zeros((2, 64), dtype=np.float32)).shape == (2,)
    assert {p.name for p in kept.iterdir()} == {"model.h", "main.c", "model"}
    runner = EmlearnCRunner(forest_c, "digits_rf", 64)
    temporary = Path(runner.workdir)
    runner.close()
    assert not temporary.exists()


def test_runner_checks_row_width(forest_runner):
    with pytest.raises(InvalidInput, match="64 features"):
        forest_runner.predict(np.zeros((3, 10), dtype=np.float32))


def test_missing_emlearn_names_the_extra(forest, monkeypatch):
    monkeypatch.setitem(sys.modules, "emlearn", None)
    with pytest.raises(MissingExtra) as caught:
        sklearn_to_emlearn_c(forest, "m")
    assert (caught.value.package, caught.value.extra) == ("emlearn", "mcu")


def test_importing_emlearn_leaves_numpy_error_state_alone():
    """emlearn.bayes calls numpy.seterr(all="raise") on import; edgeops undoes it."""
    code = (
        "import numpy as np\n"
        "from edgeops.convert.emlearn_c import _emlearn\n"
        "before = np.geterr()\n"
        "_emlearn()\n"
        "print(np.geterr() == before)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True"
