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
  "Where cmake --install puts khala_cache/ (relative to the prefix, or absolute); empty: the interpreter's directory for the prefix")

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
