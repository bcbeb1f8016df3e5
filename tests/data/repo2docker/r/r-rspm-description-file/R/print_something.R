print_something <- function()
  {
    print('blah');
  }
