include(CheckCCompilerFlag)

set(VMGPU_WARNING_FLAGS
  -Wall -Wextra -Wshadow -Wformat=2 -Wwrite-strings -Wvla -Wmissing-prototypes
  -Wnull-dereference -Wimplicit-fallthrough -Wstrict-prototypes -Wpointer-arith
  -Wundef -fstack-protector-strong)

foreach(flag IN LISTS VMGPU_WARNING_FLAGS)
  string(MAKE_C_IDENTIFIER "HAVE${flag}" var)
  check_c_compiler_flag(${flag} ${var})
  if(${var})
    add_compile_options(${flag})
  endif()
endforeach()

if(VMGPU_WERROR)
  add_compile_options(-Werror)
endif()

if(VMGPU_SANITIZE)
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_link_options(-fsanitize=address,undefined)
endif()
