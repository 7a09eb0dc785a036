# Run by `cmake --install` (install(SCRIPT) in daemon/CMakeLists.txt, which sets the KHALA_*
# variables first): installs khalad.service, made now from khalad.service.in for the prefix of
# this install, the khala sysusers.d file, khalad.conf.example, and khalad.conf unless one is
# already there (an operator's edits are never overwritten). On a live system-wide install as
# root it also makes the khala user and group (systemd-sysusers), as a package's postinst does,
# so that `systemctl enable --now khalad` works next.

function(khala_abs out dir)
  if(IS_ABSOLUTE "${dir}")
    set(${out} "${dir}" PARENT_SCOPE)
  else()
    set(${out} "${CMAKE_INSTALL_PREFIX}/${dir}" PARENT_SCOPE)
  endif()
endfunction()

set(khala_system_wide FALSE)
if(CMAKE_INSTALL_PREFIX MATCHES "^/usr(/local)?/?$")
  set(khala_system_wide TRUE)
endif()
if(KHALA_CONFDIR STREQUAL "")
  if(khala_system_wide)
    set(KHALA_CONFDIR /etc/khala)
  else()
    set(KHALA_CONFDIR etc/khala)
  endif()
endif()
khala_abs(khala_confdir "${KHALA_CONFDIR}")
khala_abs(khala_unitdir "${KHALA_UNITDIR}")
khala_abs(khala_sysusersdir "${KHALA_SYSUSERSDIR}")
khala_abs(khala_bindir "${KHALA_BINDIR}")

# The unit names the paths khalad has after this install (without DESTDIR, a staging root).
set(KHALAD_PATH "${khala_bindir}/khalad")
set(KHALA_CONF_PATH "${khala_confdir}/khalad.conf")
# One made unit per destination, so that two installs at once (the tests do) never swap units.
string(MD5 khala_dest "$ENV{DESTDIR}|${CMAKE_INSTALL_PREFIX}")
set(khala_unit "${KHALA_DAEMON_BIN}/unit-${khala_dest}/khalad.service")
configure_file("${KHALA_DAEMON_SRC}/khalad.service.in" "${khala_unit}" @ONLY)
file(INSTALL DESTINATION "${khala_unitdir}" TYPE FILE FILES "${khala_unit}")
file(INSTALL DESTINATION "${khala_sysusersdir}" TYPE FILE RENAME khala.conf
  FILES "${KHALA_DAEMON_SRC}/khala.sysusers")
file(INSTALL DESTINATION "${khala_confdir}" TYPE FILE
  FILES "${KHALA_DAEMON_SRC}/khalad.conf.example")
if(EXISTS "$ENV{DESTDIR}${khala_confdir}/khalad.conf")
  message(STATUS "Kept: $ENV{DESTDIR}${khala_confdir}/khalad.conf (it exists; "
    "khalad.conf.example beside it lists every key)")
else()
  file(INSTALL DESTINATION "${khala_confdir}" TYPE FILE FILES "${KHALA_DAEMON_SRC}/khalad.conf")
endif()

if(khala_system_wide AND "$ENV{DESTDIR}" STREQUAL "")
  execute_process(COMMAND id -u OUTPUT_VARIABLE khala_euid OUTPUT_STRIP_TRAILING_WHITESPACE)
  find_program(KHALA_SYSUSERS systemd-sysusers)
  if(khala_euid STREQUAL "0" AND KHALA_SYSUSERS)
    message(STATUS "Making the khala user and group: systemd-sysusers "
      "${khala_sysusersdir}/khala.conf")
    execute_process(COMMAND ${KHALA_SYSUSERS} "${khala_sysusersdir}/khala.conf"
      RESULT_VARIABLE khala_rc)
    if(NOT khala_rc EQUAL 0)
      message(WARNING "systemd-sysusers failed (${khala_rc}): khalad.service needs the khala "
        "user and group")
    endif()
  else()
    message(STATUS "Make the khala user and group before starting khalad.service: "
      "systemd-sysusers ${khala_sysusersdir}/khala.conf (as root)")
  endif()
endif()
