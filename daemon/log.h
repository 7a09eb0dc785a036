/*
 * khalad's log: one JSON object per line on stderr (journald keeps them). Every daemon module
 * logs through khala__log(); it depends on nothing else in khalad, so that the daemon core
 * (daemon/CMakeLists.txt, khala_daemon_core) links without khalad.c or handlers.c.
 */
#ifndef KHALA_DAEMON_LOG_H
#define KHALA_DAEMON_LOG_H

/**
 * @brief Write one structured log line: {"ts":..., "level":..., "msg":..., key: value...}.
 * @param[in] level "debug", "info", "warn" or "error".
 * @param[in] msg the message, a full sentence without a final period.
 * @param[in] ... key/value pairs as const char * (a NULL value is written as ""), ended by a
 *            NULL key. A key is never "ts", "level" or "msg", the line's own fields (asserted);
 *            a cache level is logged as "tier".
 * @note Called from khalad's loop thread; each line is written and flushed whole.
 */
void khala__log(const char *level, const char *msg, ...);

#endif /* KHALA_DAEMON_LOG_H */
