/* coherence: being written (issue 4). */
