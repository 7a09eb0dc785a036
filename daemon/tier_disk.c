/* tier_disk: being written (issue 4). */
