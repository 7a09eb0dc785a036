/* tier_redis: being written (issue 4). */
