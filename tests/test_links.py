"""The command printed beside a run's link: `mlflow ui` serving the store the run used, on the port
the link names; nothing for a tracking server (the link is the server's own page); never a
credential."""

import pytest

from mnist_cnn.tracking.links import LOCAL_UI, run_url, ui_hint


def test_a_sqlite_store_gets_the_mlflow_ui_command_that_serves_it_where_the_link_points(tmp_path):
    uri = (
        f"sqlite:///{tmp_path}/my runs/mlflow.db"  # absolute, as mnist-cnn-train makes every store path; a space in it
    )
    assert ui_hint(uri) == (
        f"  (serve this store's UI with: mlflow ui --backend-store-uri 'sqlite:///{tmp_path}/my runs/mlflow.db' "
        "--host 127.0.0.1 --port 5000)"
    )
    assert run_url(uri, "1", "abc").startswith(f"{LOCAL_UI}/#/") and LOCAL_UI.endswith(":5000")


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000", "https://alice:s3cret@mlflow.example.org/?token=abc"])
def test_a_tracking_server_gets_no_command(uri):
    assert ui_hint(uri) == ""


def test_credentials_in_a_stores_uri_never_appear_in_the_command():
    hint = ui_hint("postgresql://alice:s3cret@db.example.org:5432/mlflow?sslmode=require")
    assert "s3cret" not in hint
    assert "--backend-store-uri 'postgresql://alice:***@db.example.org:5432/mlflow?sslmode=require'" in hint
