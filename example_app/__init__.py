"""A small shop: placing an order publishes background jobs that confirm and ship it.

Run the whole demo with ``scripts/demo.sh`` (see README.md).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

from flask import Flask, abort, jsonify, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from flask_bgqueue import BackgroundQueue, PermanentError, TemporaryError


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
bgq = BackgroundQueue()


class Order(db.Model):  # type: ignore[name-defined,misc]
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str]
    item: Mapped[str]
    status: Mapped[str] = mapped_column(default="placed")
    confirmed_at: Mapped[datetime | None]
    shipped_at: Mapped[datetime | None]


def load_order(order_id: int) -> Order:
    """The order a job is about; an order deleted since then fails the job for good (a retry
    would not bring it back)."""
    order = db.session.get(Order, order_id)
    if order is None:
        raise PermanentError(f"order {order_id} does not exist (any more)")
    return order


@bgq.callback("send_confirmation", priority=10)
def send_confirmation(order_id: int) -> None:
    """Pretend to e-mail the customer."""
    order = load_order(order_id)
    order.confirmed_at = datetime.now(timezone.utc)
    order.status = "confirmed"
    db.session.commit()


@bgq.callback("ship_order", priority=20)
def ship_order(order_id: int) -> None:
    """Runs after the confirmation: both jobs share the order's serial group."""
    order = load_order(order_id)
    if order.confirmed_at is None:
        raise TemporaryError("not confirmed yet")
    order.shipped_at = datetime.now(timezone.utc)
    order.status = "shipped"
    db.session.commit()


def create_app() -> Flask:
    app = Flask(__name__, instance_relative_config=True)
    os.makedirs(app.instance_path, exist_ok=True)
    app.config.update(
        SECRET_KEY=os.environ.get("SECRET_KEY", "demo only - set a real secret"),
        # The app's data and the job queue live in two SQLite files: one writer each.
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{os.path.join(app.instance_path, 'shop.db')}",
        SQLALCHEMY_BINDS={"bgqueue": f"sqlite:///{os.path.join(app.instance_path, 'jobs.db')}"},
        BGQUEUE_PRIORITIES=[10, 20],
        # A job is announced only once the order it refers to is committed.
        BGQUEUE_PUBLISH_AFTER_APP_COMMIT=True,
    )
    db.init_app(app)
    bgq.init_app(app)
    with app.app_context():
        db.create_all()

    @app.post("/orders")
    def place_order():  # type: ignore[no-untyped-def]
        data = request.get_json(force=True)
        order = Order(email=data["email"], item=data["item"])
        db.session.add(order)
        db.session.flush()
        group = f"order-{order.id}"
        bgq.publish("send_confirmation", {"order_id": order.id}, serial_group=group)
        bgq.publish("ship_order", {"order_id": order.id}, serial_group=group)
        db.session.commit()
        return jsonify(id=order.id, status=order.status), 201

    @app.get("/orders/<int:order_id>")
    def show_order(order_id: int):  # type: ignore[no-untyped-def]
        order = db.session.get(Order, order_id) or abort(404)
        return jsonify(
            id=order.id,
            item=order.item,
            status=order.status,
            confirmed=order.confirmed_at is not None,
            shipped=order.shipped_at is not None,
        )

    return app
