"""Phone photos of digits on paper (tests/helpers/photos.py: grey noisy paper, plain, lined or squared,
a shadow, the camera turned and tilted, the digit small and off-centre, JPEG): the character is found
and read as MNIST's own; a photo of blank paper, or of several mnist_test, says so; `--show-input` writes
what the model saw, and refuses a folder it cannot write."""

import numpy as np
import pytest
from PIL import Image

from mnist_cnn.cli import predict
from mnist_cnn.data.images import load_image, to_mnist
from mnist_cnn.errors import DataError
from tests.helpers.digits import similarity
from tests.helpers.photos import PAPERS, SHADOWS, photo, write_photos


@pytest.mark.slow  # 1.5 s
def test_a_photo_of_a_digit_comes_out_as_mnist_made_it(mnist_test, tmp_path):
    """Each paper and shadow once: the 28x28 image is the MNIST digit itself, give or take the turn,
    the tilt and the upscaling (a clean PNG resized twice scores 0.85 in test_predict)."""
    images, _ = mnist_test
    for index in range(len(PAPERS) * len(SHADOWS)):
        path = tmp_path / f"{index}.jpg"
        photo(images[index], index).save(path, quality=50)
        pixels = load_image(path)[0].numpy()
        assert similarity(images[index] / 255, pixels) > 0.8, f"photo {index}"
        assert (pixels[:2] == 0).all() and (pixels[:, :2] == 0).all(), "the paper around the character exactly black"


@pytest.mark.parametrize("index", range(len(PAPERS) * len(SHADOWS)), ids=lambda i: f"{PAPERS[i % 3]}-{SHADOWS[i % 2]}")
def test_a_photo_of_blank_paper_is_blank(tmp_path, index):
    path = tmp_path / "blank.jpg"
    photo(np.zeros((28, 28), np.uint8), index).save(path, quality=50)
    with pytest.raises(DataError, match=f"^{path}: the image is blank: no mark is 40% darker than the paper"):
        load_image(path)


@pytest.mark.parametrize("count", [2, 3])
def test_a_photo_of_several_digits_side_by_side_names_them(mnist_test, tmp_path, count):
    images, _ = mnist_test
    for index in range(3):  # a "1" beside a "0" (index 2) too: a fifth of its ink
        path = tmp_path / f"{index}.jpg"
        photo(np.hstack(images[index : index + count]), index).save(path, quality=50)
        with pytest.raises(DataError, match=f"^{path}: several characters: {count} groups of strokes far apart"):
            load_image(path)


def test_a_speck_far_from_the_digit_is_dropped(mnist_test):
    """A mark with under a tenth of the digit's ink, far from it, is dirt: the 28x28 image is the digit's alone."""
    digit = 255 - mnist_test[0][0]
    page = np.full((28, 84), 255, np.uint8)
    page[:, :28] = digit
    page[12:14, 70:72] = 0  # 4 pixels of ink, two digit-widths away
    alone = to_mnist(Image.fromarray(digit))
    assert to_mnist(Image.fromarray(page)).allclose(alone)


@pytest.mark.slow
def test_photos_of_the_first_20_test_digits_are_at_least_18_right(digits_model, mnist_test, tmp_path, capsys):
    images, labels = mnist_test
    photos = tmp_path / "photos"
    photos.mkdir()
    paths = write_photos(images[:20], photos)
    with pytest.raises(SystemExit) as exit:
        predict.main(["--model", "models:/digits@champion", "--tracking-uri", digits_model["uri"], *map(str, paths)])
    out = capsys.readouterr()
    assert exit.value.code == 0 and out.err == ""
    predicted = [int(line.split(": ")[1].split()[0]) for line in out.out.splitlines()]
    right = sum(p == label for p, label in zip(predicted, labels[:20]))
    # 20 of 20 on 2 EPYC cores (read as before this change: 2 of 20); 18 leaves room for other CPUs
    assert right >= 18, list(zip([p.name for p in paths], predicted, labels[:20]))


@pytest.mark.slow
def test_show_input_writes_the_28x28_image_the_model_saw(digits_model, mnist_test, tmp_path, capsys):
    images, _ = mnist_test
    for folder in ("a", "b"):  # two files of one name: the second image is 00-plain-gradient-2.png
        (tmp_path / folder).mkdir()
        write_photos(images[:1], tmp_path / folder)
    paths = [tmp_path / folder / "00-plain-gradient.jpg" for folder in ("a", "b")]
    shown = tmp_path / "shown" / "new"  # made, parents too
    with pytest.raises(SystemExit) as exit:
        predict.main(
            ["--model", digits_model["run_id"], "--tracking-uri", digits_model["uri"], "--show-input", str(shown)]
        )
    assert exit.value.code == 2  # no FILE: argparse's own message
    with pytest.raises(SystemExit) as exit:
        predict.main(
            [
                "--model",
                digits_model["run_id"],
                "--tracking-uri",
                digits_model["uri"],
                "--show-input",
                str(shown),
                *map(str, paths),
            ]
        )
    assert exit.value.code == 0, capsys.readouterr().err
    assert sorted(p.name for p in shown.iterdir()) == ["00-plain-gradient-2.png", "00-plain-gradient.png"]
    for path, name in zip(paths, ["00-plain-gradient.png", "00-plain-gradient-2.png"]):
        written = np.asarray(Image.open(shown / name))
        assert written.shape == (28, 28) and written.dtype == np.uint8
        assert np.abs(written / 255 - load_image(path)[0].numpy()).max() <= 0.5 / 255  # the model's input, in 8 bits


@pytest.mark.parametrize(
    "folder, message",
    [
        ("a_file", "--show-input {tmp}/a_file: is a file, not a folder; choose a folder for the 28x28 images."),
        (
            "a_file/inputs",
            "--show-input {tmp}/a_file/inputs: cannot write there (Not a directory); choose a folder you can write.",
        ),
        ("", "--show-input '': no folder named; give the folder for the 28x28 images."),
    ],
    ids=["a-file", "under-a-file", "empty"],
)
def test_show_input_refuses_a_folder_it_cannot_write_before_loading_the_model(tmp_path, capsys, folder, message):
    (tmp_path / "a_file").write_text("not a folder")
    image = tmp_path / "digit.png"
    Image.new("L", (28, 28), "white").save(image)
    target = str(tmp_path / folder) if folder else ""
    with pytest.raises(SystemExit) as exit:  # no store at all: the folder is refused first
        predict.main(
            ["--model", "0" * 32, "--tracking-uri", f"sqlite:///{tmp_path}/none.db", "--show-input", target, str(image)]
        )
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err == f"mnist-cnn-predict: {message.format(tmp=tmp_path)}\n"
    assert (tmp_path / "a_file").read_text() == "not a folder"
