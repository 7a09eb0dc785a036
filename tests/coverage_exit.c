/*
 * Coverage builds only (KHALA_COVERAGE): _exit(2) that writes the coverage counters first.
 *
 * The tests fork readers, writers and workers that end with _exit, which skips the exit handler
 * that writes a process's gcov counters: everything those children ran (the reader side of
 * lib/, most of it) would count as never run. Every test executable of a coverage build is
 * linked with -Wl,--wrap=_exit and this file, so that its own calls to _exit, and the
 * library's, dump the counters first. Nothing else changes: the process still ends at once,
 * without atexit handlers or stdio flushes.
 */
void __gcov_dump(void);
void __real__exit(int status) __attribute__((noreturn));
void __wrap__exit(int status) __attribute__((noreturn));

void __wrap__exit(int status) {
    __gcov_dump();
    __real__exit(status);
}
