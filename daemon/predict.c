/* predict: being written (issue 4). */
