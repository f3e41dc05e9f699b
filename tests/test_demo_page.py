"""mnist-cnn-demo in a real browser: headless Chromium, driven by Selenium through chromedriver, draws
on the page with pointer events (a mouse, then a pen), uploads a picture and reads the answers off
the page, for two models trained on the real MNIST side by side.

CI installs the browser (`apt-get install chromium chromium-driver`, .ci/run); elsewhere the tests
are skipped without it. MNIST_CNN_DEMO_SCREENSHOT=PATH keeps the page's screenshot with two models
(the README's docs/images/demo.png is one).
"""

import json
import math
import os
import shutil
import signal
import sys

import pytest
from PIL import Image

from mnist_cnn.cli import predict
from mnist_cnn.runner import train
from tests.helpers import processes
from tests.helpers.config import make_cfg
from tests.helpers.mlflow_store import runs

pytestmark = pytest.mark.slow

DEMO = [sys.executable, "-m", "mnist_cnn.cli.demo"]  # mnist-cnn-demo, with the interpreter running the tests
PROMPT = "Draw a digit on the pad with a mouse, a finger or a pen: the models read it as you draw."


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium, the system's, with its chromedriver: nothing is downloaded."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        if os.environ.get("CI"):
            pytest.fail("CI must install the browser: apt-get install chromium chromium-driver (.ci/run does)")
        pytest.skip("no chromium and chromedriver here: apt-get install chromium chromium-driver")
    from selenium import webdriver  # only where the browser is

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,640"):
        options.add_argument(argument)  # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
    driver = webdriver.Chrome(service=webdriver.ChromeService(chromedriver), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def two_models(digits_model, real_root, tmp_path_factory) -> dict:
    """digits@champion and a second, smaller model of another seed, both in one store: a copy of the
    digits store (whose model files stay where they are), with the second run trained into it."""
    folder = tmp_path_factory.mktemp("demo")
    shutil.copy(digits_model["uri"].removeprefix("sqlite:///"), folder / "mlflow.db")
    uri = f"sqlite:///{folder}/mlflow.db"
    cfg = make_cfg(
        [
            f"data.root={real_root}",
            "trainer.epochs=1",
            "trainer.limit_batches=200",
            "data.val_size=0",
            "objective.metrics=[test_acc]",
            "model.layers.0.out_channels=8",
            "seed=1",
            "trainer.progress=false",
            f"tracking.uri={uri}",
        ]
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # MLflow puts artifacts under ./mlruns
        train.run(cfg, folder / "out")
    second = next(r.info.run_id for r in runs(uri) if r.info.run_id != digits_model["run_id"])
    return {"uri": uri, "folder": folder, "specs": ["models:/digits@champion", f"runs:/{second}/model"]}


def start_demo(models: dict, *args: str):
    """`mnist-cnn-demo MODELS --port 0` on the models' store: (the process, the page's address)."""
    process = processes.start(
        [*DEMO, *models["specs"], "--port", "0", "--tracking-uri", models["uri"], *args], models["folder"]
    )
    line = process.stdout.readline()
    assert "at http://127.0.0.1:" in line, line + process.stdout.read()
    return process, line.split(" at ")[1].split()[0]


@pytest.fixture(scope="module")
def page(two_models, browser):
    """The page with the two models, open in the browser; the server is stopped after the module."""
    process, url = start_demo(two_models)
    browser.get(url)
    wait(browser, lambda d: len(d.find_elements("css selector", ".model")) == 2)
    yield browser
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=30)


def wait(driver, condition, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait  # only where the browser is

    return WebDriverWait(driver, timeout).until(condition)


def settled(driver) -> str:
    """Waits until every answer the page asked for is in; returns the page's message line."""
    wait(driver, lambda d: d.find_element("tag name", "body").get_attribute("data-settled") == "yes")
    return driver.find_element("id", "message").text


def answers(driver) -> list:
    """Each panel's answer, as (its model's label, the class it names)."""
    return [
        (panel.get_attribute("data-label"), panel.find_element("class name", "answer").get_attribute("data-class"))
        for panel in driver.find_elements("css selector", ".model")
    ]


def draw(driver, points, pointer: str) -> None:
    """One stroke through `points` (offsets from the pad's centre, in CSS pixels) with a mouse or a
    pen: pointerdown, a pointermove per point, pointerup, as a hand would give them."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder  # only where the browser is
    from selenium.webdriver.common.actions.pointer_input import PointerInput  # as above

    pad = driver.find_element("id", "pad")
    actions = ActionBuilder(driver, mouse=PointerInput(pointer, pointer), duration=20)  # ms a move takes
    (x, y), rest = points[0], points[1:]
    actions.pointer_action.move_to(pad, x, y).pointer_down()
    for x, y in rest:
        actions.pointer_action.move_to(pad, x, y)
    actions.pointer_action.pointer_up()
    actions.perform()


def test_a_drawn_1_and_0_are_read_by_both_models_with_each_class_s_bar_and_the_28x28_input(page, two_models, tmp_path):
    driver = page
    draw(driver, [(0, y) for y in range(-95, 96, 10)], "mouse")  # a 1: one vertical stroke
    said = settled(driver)
    assert answers(driver) == [(label, "1") for label in two_models["specs"]], said
    assert said.startswith("answered in ") and said.endswith(" ms.")
    for panel in driver.find_elements("css selector", ".model"):
        rows = panel.find_elements("css selector", ".row")
        assert [r.get_attribute("data-class") for r in rows] == [str(k) for k in range(10)]
        assert [r.get_attribute("data-class") for r in rows if "best" in r.get_attribute("class")] == ["1"]
        assert panel.find_element("class name", "input").get_attribute("src").startswith("data:image/png;base64,")

    driver.find_element("id", "clear").click()
    assert settled(driver) == PROMPT and [c for _, c in answers(driver)] == [None, None]

    loop = [(55 * math.sin(t * math.pi / 6), -85 * math.cos(t * math.pi / 6)) for t in range(13)]
    draw(driver, loop, "pen")  # a 0: a closed loop, with a pen this time
    said = settled(driver)
    assert answers(driver) == [(label, "0") for label in two_models["specs"]], said
    print(f"\n{said}")  # how fast the page answered here (not asserted: machines are noisy)
    shot = tmp_path / "demo.png"
    driver.save_screenshot(str(shot))
    if os.environ.get("MNIST_CNN_DEMO_SCREENSHOT"):
        shutil.copy(shot, os.environ["MNIST_CNN_DEMO_SCREENSHOT"])


def page_labels(driver) -> list:
    return [panel.get_attribute("data-label") for panel in driver.find_elements("css selector", ".model")]


def test_two_models_side_by_side_each_with_a_link_to_its_run(page, two_models):
    panels = page.find_elements("css selector", ".model")
    assert page_labels(page) == two_models["specs"]
    links = [p.find_element("tag name", "a").get_attribute("href") for p in panels]
    assert all(link.startswith("http://127.0.0.1:5000/#/experiments/") for link in links)
    assert two_models["specs"][1].split("/")[1] in links[1]  # the second model's run
    first, second = (p.rect for p in panels)
    assert first["y"] == second["y"] and first["x"] + first["width"] <= second["x"]  # one row


def test_an_uploaded_mnist_test_digit_gets_the_class_mnist_cnn_predict_gives(
    page, two_models, mnist_test, tmp_path, capsys
):
    images, _ = mnist_test
    picture = tmp_path / "test_digit_0.png"
    Image.fromarray(images[0]).save(picture)
    code, out, _ = processes.run_main(
        predict.main,
        ["--model", two_models["specs"][0], "--tracking-uri", two_models["uri"], "--json", str(picture)],
        capsys,
    )
    assert code == 0
    expected = json.loads(out)[0]["class"]
    page.find_element("id", "upload").send_keys(str(picture))
    said = settled(page)
    assert answers(page)[0] == (two_models["specs"][0], expected) and said.startswith("test_digit_0.png: answered in")


def test_a_file_that_is_not_a_picture_is_one_line_on_the_page(page, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture")
    page.find_element("id", "upload").send_keys(str(notes))
    assert settled(page) == "notes.png: not an image Pillow can read; pass a PNG or JPEG file."
    assert page.find_element("id", "message").get_attribute("class") == "error"


def test_a_random_test_image_is_shown_with_its_true_class(page):
    page.find_element("id", "random").click()
    said = settled(page)
    assert said.startswith("Test image ") and ", a " in said and all(c is not None for _, c in answers(page))


def test_a_taken_port_is_exit_2_in_one_line_and_ctrl_c_is_exit_130(two_models):
    first, url = start_demo(two_models)
    port = url.rstrip("/").rsplit(":", 1)[1]
    try:
        taken = processes.run(
            [*DEMO, *two_models["specs"], "--port", port, "--tracking-uri", two_models["uri"]], two_models["folder"]
        )
        assert (taken.returncode, taken.stdout, taken.stderr) == (
            2,
            "",
            f"mnist-cnn-demo: --port {port}: already in use by another program; pick another with --port N (0: any "
            "free port).\n",
        )
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=30)
    assert first.returncode == 130
