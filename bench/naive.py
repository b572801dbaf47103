"""The seeds' script, as a baseline: subscribe to the expired channel and, for each
event, connect to MySQL, run one UPDATE, commit and close. TLS off, as theirs had it.

Run as `python -m bench.naive REDIS_URL DB MYSQL_HOST MYSQL_PORT USER DATABASE`, with the
password in $NAIVE_DB_PASSWORD.
"""

from __future__ import annotations

import os
import sys

import pymysql
import redis

UPDATE = "UPDATE orders SET status = 3 WHERE order_sn = %s AND status IN (0)"


def main(args: list[str]) -> None:
    redis_url, db, host, port, user, database = args
    password = os.environ["NAIVE_DB_PASSWORD"]
    subscriber = redis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe(f"__keyevent@{db}__:expired")
    print("subscribed", flush=True)
    for message in subscriber.listen():
        order_sn = message["data"].decode().rsplit(":", 1)[-1]
        connection = pymysql.connect(
            host=host,
            port=int(port),
            user=user,
            password=password,
            database=database,
            ssl_disabled=True,
        )
        with connection.cursor() as cursor:
            cursor.execute(UPDATE, (order_sn,))
        connection.commit()
        connection.close()


if __name__ == "__main__":
    main(sys.argv[1:])
