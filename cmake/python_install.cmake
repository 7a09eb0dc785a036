# Installing the Python package khala_cache (issue 11): `cmake --install` puts
# khala_cache/*.py and the extension _khala*.so where the interpreter the build found
# (Python3_EXECUTABLE) looks for packages under the install prefix:
#
#   Debian's python3, prefix /usr        lib/python3/dist-packages        (Debian's own packages)
#   Debian's python3, any other prefix   lib/python3.X/dist-packages      (/usr/local: on sys.path)
#   another interpreter                  lib/python3.X/site-packages
#
# The prefix is the one given at install time (`cmake --install build --prefix P`), so the
# choice is made by the install script, not at configure time. -DKHALA_PYTHON_INSTALL_DIR=dir
# (relative to the prefix, or absolute) overrides it. The extension links the static
# libkhalacache, so the installed module needs no libkhalacache.so and no rpath.
#
# Component `python`: `cmake --install build --component python` installs the package alone.
#
# Included from the top CMakeLists.txt after bindings/python; khala_python_install(<target>)
# names the extension's target.
set(KHALA_PYTHON_INSTALL_DIR "" CACHE STRING
  "Where khala_cache/ is installed (relative to the prefix, or absolute); empty: automatic")

function(khala_python_install ext_target)
  set(ver "${Python3_VERSION_MAJOR}.${Python3_VERSION_MINOR}")
  execute_process(COMMAND "${Python3_EXECUTABLE}" -c
    "import sysconfig; print('deb_system' in sysconfig.get_scheme_names())"
    OUTPUT_VARIABLE is_debian OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(KHALA_PYTHON_INSTALL_DIR)
    set(system_dir "${KHALA_PYTHON_INSTALL_DIR}")
    set(other_dir "${KHALA_PYTHON_INSTALL_DIR}")
  elseif(is_debian STREQUAL "True")
    set(system_dir "lib/python3/dist-packages")
    set(other_dir "lib/python${ver}/dist-packages")
  else()
    set(system_dir "lib/python${ver}/site-packages")
    set(other_dir "lib/python${ver}/site-packages")
  endif()
  # Evaluated by cmake_install.cmake, with the prefix of the install.
  install(CODE "
    if(CMAKE_INSTALL_PREFIX STREQUAL \"/usr\")
      set(KHALA_PYTHON_SITEDIR \"${system_dir}\")
    else()
      set(KHALA_PYTHON_SITEDIR \"${other_dir}\")
    endif()" COMPONENT python)
  install(TARGETS ${ext_target} LIBRARY DESTINATION "\${KHALA_PYTHON_SITEDIR}/khala_cache"
    COMPONENT python)
  install(DIRECTORY ${PROJECT_SOURCE_DIR}/bindings/python/khala_cache/
    DESTINATION "\${KHALA_PYTHON_SITEDIR}/khala_cache" COMPONENT python
    FILES_MATCHING PATTERN "*.py" PATTERN "__pycache__" EXCLUDE)
  message(STATUS "khala: Python package for ${Python3_EXECUTABLE} installs to <prefix>/${other_dir}"
    " (<prefix>/${system_dir} when the prefix is /usr)")
endfunction()

# The environment the Python tests' interpreter needs in this build (a list of NAME=value for
# set_tests_properties(... ENVIRONMENT)). In an ASan build the extension is instrumented but
# the interpreter is not, so the ASan runtime must be loaded first (LD_PRELOAD of the compiler's
# libasan.so); leak detection is off because CPython keeps objects alive at exit by design;
# PYTHONMALLOC=malloc sends Python's own allocations through ASan's malloc, so an overflow of a
# bytes object the extension fills is caught too.
set(KHALA_PYTHON_TEST_ENV "")
if(KHALA_SANITIZE MATCHES "address")
  if(CMAKE_C_COMPILER_ID STREQUAL "GNU")
    set(asan_lib libasan.so)
  else()
    set(asan_lib libclang_rt.asan-${CMAKE_SYSTEM_PROCESSOR}.so)
  endif()
  execute_process(COMMAND ${CMAKE_C_COMPILER} -print-file-name=${asan_lib}
    OUTPUT_VARIABLE KHALA_ASAN_RUNTIME OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT IS_ABSOLUTE "${KHALA_ASAN_RUNTIME}" OR NOT EXISTS "${KHALA_ASAN_RUNTIME}")
    message(WARNING "khala: no ASan runtime (${asan_lib}) for the Python tests' LD_PRELOAD")
  endif()
  list(APPEND KHALA_PYTHON_TEST_ENV "LD_PRELOAD=${KHALA_ASAN_RUNTIME}"
    "ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=0" "PYTHONMALLOC=malloc")
endif()

# The install checks (tests/check_python.sh), as CTest tests of label `python`:
#   python_install  cmake --install --component python into a DESTDIR, imported from there
#   python_pip      pip install --no-build-isolation into a venv (not in sanitizer builds: pip
#                   builds its own, uninstrumented extension, which the plain tree checks)
function(khala_python_tests ext_target)
  set(check ${PROJECT_SOURCE_DIR}/tests/check_python.sh)
  add_test(NAME python_install COMMAND ${check} install ${CMAKE_COMMAND} ${PROJECT_BINARY_DIR}
    ${Python3_EXECUTABLE} $<TARGET_FILE:khalad>)
  set_tests_properties(python_install PROPERTIES LABELS "python" TIMEOUT 120
    ENVIRONMENT "${KHALA_PYTHON_TEST_ENV}")
  if(NOT KHALA_SANITIZE)
    add_test(NAME python_pip COMMAND ${check} pip ${PROJECT_SOURCE_DIR} ${Python3_EXECUTABLE}
      $<TARGET_FILE:khalad>)
    set_tests_properties(python_pip PROPERTIES LABELS "python" TIMEOUT 300 SKIP_RETURN_CODE 77)
  endif()
endfunction()
